"""The user documentation keeps its promises: every link between README.md and docs/ resolves
(files and #anchors), every ```yaml snippet parses as CloudFormation YAML and asks only for what
the function accepts, and the pages say what the code does where they once contradicted it.

`snippet_findings` takes one snippet's text and returns findings in the function's own words
(rolekeeper.models: RESOURCE_TYPES, the models' aliases and validators); values given as
intrinsic functions (!Ref, !Sub, !GetAtt, Fn::...) are known only at deploy time and are not
judged. It is meant to be the same check `rolekeeper validate` applies to a whole template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from rolekeeper.domain import properties as models
from rolekeeper.domain.catalog import FIXED_ROLE_NAMES

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(<?([^)\s>]+)>?(?:[ \t]+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
# Stands in for a value only known at deploy time; a finding about it is no finding.
DEPLOY_TIME = "\x00deploy-time value\x00"
CFN_ONLY = ("ServiceToken", "ServiceTimeout")  # CloudFormation's own custom resource properties


# --- snippets --------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML as CloudFormation reads it: short-form intrinsic tags (!Ref, !Sub, !GetAtt, ...)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> str:
    return DEPLOY_TIME


_Loader.add_multi_constructor("!", _intrinsic)


def _deploy_time(value: Any) -> Any:
    """The value with every intrinsic function (long form too) replaced by DEPLOY_TIME."""
    if isinstance(value, dict):
        if len(value) == 1 and any(k in ("Ref", "Condition") or str(k).startswith("Fn::") for k in value):
            return DEPLOY_TIME
        return {k: _deploy_time(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deploy_time(v) for v in value]
    return value


def _key_lines(node: yaml.Node | None) -> dict[str, int]:
    """The 0-based line of each key of a mapping node."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line for k, _v in node.value if isinstance(k, yaml.ScalarNode)}


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _resources(data: Any, root: yaml.Node) -> tuple[dict[str, Any], yaml.Node | None]:
    """A whole template's Resources, or a fragment of one (logical id -> {Type: ...})."""
    if isinstance(data, dict) and isinstance(data.get("Resources"), dict):
        return data["Resources"], _child(root, "Resources")
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "Type" in v for v in data.values()):
        return data, root
    return {}, None


def _property_findings(
    resource_type: str, properties: dict[str, Any], lines: dict[str, int], default: int
) -> list[tuple[int, str]]:
    model = models.RESOURCE_TYPES[resource_type]
    given = {k: _deploy_time(v) for k, v in properties.items() if k not in CFN_ONLY}
    try:
        model.model_validate(given, by_alias=True, by_name=False)
    except ValidationError as error:
        found = []
        for item in error.errors(include_url=False):
            if item["input"] == DEPLOY_TIME:
                continue
            detail: dict[str, Any] = {"type": item["type"], "loc": item["loc"], "input": item["input"]}
            if "ctx" in item:
                detail["ctx"] = item["ctx"]
            one = ValidationError.from_exception_data(error.title, [detail])  # type: ignore[list-item]
            line = lines.get(str(item["loc"][0]), default) if item["loc"] else default
            found.append((line, models.describe(one, model)))
        return found
    return []


def snippet_findings(text: str) -> list[str]:
    """What is wrong with one YAML snippet, each finding with its line (1-based, in the snippet):
    YAML CloudFormation cannot read, a Custom:: type rolekeeper does not serve, a rolekeeper
    resource without ServiceToken, properties the function does not know or values it refuses."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader with intrinsic tags)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        return [f"line {mark.line + 1 if mark else '?'}: not CloudFormation YAML: {error}"]
    if root is None:
        return []
    resources, node = _resources(data, root)
    resource_lines = _key_lines(node)
    found: list[tuple[int, str]] = []
    for logical_id, resource in resources.items():
        at = resource_lines.get(str(logical_id), 0)
        resource_type = resource.get("Type") if isinstance(resource, dict) else None
        if not isinstance(resource_type, str):
            found.append((at, f"{logical_id}: Type must be a string"))
            continue
        if not resource_type.startswith("Custom::"):
            continue  # AWS's own types are cfn-lint's business
        if resource_type not in models.RESOURCE_TYPES:
            found.append(
                (
                    at,
                    f"{logical_id}: Type {resource_type} is not served by rolekeeper; "
                    f"use one of {', '.join(models.RESOURCE_TYPES)}",
                )
            )
            continue
        properties = resource.get("Properties") or {}
        props_node = _child(_child(node, str(logical_id)), "Properties")
        lines = _key_lines(props_node)
        if not isinstance(properties, dict):
            found.append((at, f"{logical_id}: Properties must be a mapping"))
            continue
        if "ServiceToken" not in properties:
            found.append((at, f"{logical_id}: ServiceToken is required (rolekeeper's ServiceToken output)"))
        for line, message in _property_findings(resource_type, properties, lines, at):
            found.append((line, f"{logical_id}: {message}"))
    return [f"line {line + 1}: {message}" for line, message in sorted(found)]


def yaml_snippets() -> Iterator[tuple[str, int, str]]:
    """(page, line of the snippet's first line, text) for every ```yaml block of the pages."""
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) in ("yaml", "yml"):
                first = text.count("\n", 0, match.start(2)) + 1
                yield page.relative_to(ROOT).as_posix(), first, match.group(2)


SNIPPETS = list(yaml_snippets())


@pytest.mark.parametrize(("page", "first", "text"), SNIPPETS, ids=[f"{p}:{n}" for p, n, _t in SNIPPETS])
def test_docs_yaml_snippet_is_what_the_function_accepts(page: str, first: int, text: str) -> None:
    findings = [
        re.sub(r"^line (\d+):", lambda m: f"{page}:{first + int(m.group(1)) - 1}:", f)
        for f in snippet_findings(text)
    ]
    assert findings == []


def test_docs_show_every_resource_type_in_a_checked_snippet() -> None:
    shown = {t for _p, _n, text in SNIPPETS for t in models.RESOURCE_TYPES if f"Type: {t}" in text}
    assert shown == set(models.RESOURCE_TYPES)
    readme = {t for p, _n, text in SNIPPETS if p == "README.md" for t in models.RESOURCE_TYPES if t in text}
    assert readme == set(models.RESOURCE_TYPES), "one example per resource type in the README"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Resources:\n  R:\n    Type: Custom::ServiceRole\n    Properties:\n      ServiceToken: !ImportValue t\n"
            "      Blueprint: ecs-instance\n",
            [],
        ),
        (
            "R:\n  Type: Custom::ServiceRole\n  Properties:\n    ServiceToken: x\n    BluePrint: ecs-instance\n",
            [
                "line 1: R: Blueprint is required",
                "line 5: R: BluePrint is not a known property: did you mean Blueprint? (known: Blueprint,",
            ],
        ),
        (
            "R:\n  Type: Custom::ServiceLinkedRole\n  Properties:\n    ServiceToken: x\n"
            "    AwsServiceName: spot.amazonaws.com\n    OnDelete: Keep\n",
            [
                "line 1: R: AWSServiceName is required",
                "line 5: R: AwsServiceName is not a known property",
                "line 6: R: OnDelete must be Retain or Delete",
            ],
        ),
        (
            "R:\n  Type: Custom::ServiceRole\n  Properties:\n    ServiceToken: x\n    Blueprint: ecs\n"
            "    Tags: {team: platform}\n",
            ["line 5: R: Blueprint must be one of", "line 6: R: Tags "],
        ),
        (
            "R:\n  Type: Custom::SpotFleetKmsGrant\n  Properties:\n    ServiceToken: !Ref T\n"
            "    KeyId: !GetAtt Key.Arn\n    Operations: [Decrypt, Dance]\n",
            ["line 6: R: Operations must be KMS grant operations (Dance is not one)"],
        ),
        (
            "R:\n  Type: Custom::SpotFleetKmsGrant\n  Properties:\n    ServiceToken: {Ref: T}\n"
            "    KeyId: {'Fn::GetAtt': [Key, Arn]}\n    Heal: !Ref Healing\n",
            [],
        ),
        (
            "R:\n  Type: Custom::Role\n  Properties: {ServiceToken: x}\n",
            ["line 1: R: Type Custom::Role is not served by rolekeeper"],
        ),
        (
            "R:\n  Type: Custom::ServiceRole\n  Properties: {Blueprint: batch-service}\n",
            ["line 1: R: ServiceToken is required"],
        ),
        ("R:\n  Type: AWS::IAM::Role\n  Properties: {Anything: 1}\n", []),
        ("R:\n  Type: Custom::ServiceRole\n   Properties: [\n", ["line 3: not CloudFormation YAML"]),
    ],
)
def test_snippet_findings_in_the_functions_words(text: str, expected: list[str]) -> None:
    findings = snippet_findings(text)
    assert len(findings) == len(expected), findings
    for start in expected:
        assert any(f.startswith(start) for f in findings), (start, findings)


# --- links -----------------------------------------------------------------------------------


def _without_fences(text: str) -> str:
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _prose(text: str) -> str:
    """The page without fenced code and inline code (links there are not links)."""
    return INLINE_CODE.sub("", _without_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation other than - and _
    dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(_without_fences(page.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


@pytest.mark.parametrize("page", [*PAGES, ROOT / "events" / "README.md"], ids=lambda p: p.name)
def test_docs_links_resolve_to_files_and_headings(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert broken == []


def test_readme_reaches_every_docs_page_in_one_click() -> None:
    linked = {
        (ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md") if not t.startswith("#")
    }
    assert {p.resolve() for p in PAGES[1:]} <= linked


def test_readme_starts_with_the_two_commands_of_a_fresh_machine() -> None:
    readme = (ROOT / "README.md").read_text()
    first = next(m for m in FENCE.finditer(readme))
    commands = [line.split("#")[0].strip() for line in first.group(2).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_slug_is_githubs() -> None:
    assert slug("Operator status: `rolekeeper status`") == "operator-status-rolekeeper-status"
    assert slug("`Custom::ServiceLinkedRole`") == "customservicelinkedrole"
    assert slug("Deploy across an organization") == "deploy-across-an-organization"
    assert slug("What it does, and why (in short)") == "what-it-does-and-why-in-short"


# --- what the pages say against what the code does -------------------------------------------


def _template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)  # noqa: S506


def test_application_role_name_prefix_is_described_as_the_code_decides() -> None:
    """Adoption is for the documented fixed names only (catalog.FIXED_ROLE_NAMES); a prefixed
    name is created, never adopted (ownership.adoption_refusal)."""
    description = " ".join(_template()["Parameters"]["ApplicationRoleNamePrefix"]["Description"].split())
    row = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `ApplicationRoleNamePrefix`")
    )
    for text in (description, row):
        named = set(re.findall(r"[A-Za-z][\w-]*(?:Role|role)\b", text))
        assert set(FIXED_ROLE_NAMES) <= named, set(FIXED_ROLE_NAMES) - named
        assert named - set(FIXED_ROLE_NAMES) <= {"ServiceRole"}, named
        assert "never adopt" in text and "or adopt" not in text


def test_events_readme_calls_tagged_only_the_events_with_tags() -> None:
    rows = re.findall(
        r"^\| `([\w-]+\.json)` \|[^|]*\|([^|]*)\|", (ROOT / "events" / "README.md").read_text(), re.M
    )
    assert rows
    for name, scenario in rows:
        event = json.loads((ROOT / "events" / name).read_text())
        tagged = "Tags" in event.get("ResourceProperties", {})
        says = bool(re.search(r"\btag(s|ged)?\b", scenario.replace("spot-fleet-tagging", "")))
        assert says == tagged, (name, scenario)
