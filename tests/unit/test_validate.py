"""rolekeeper validate and the cfn-lint rule E9101: the function's validation, before deploy.

The corpus (tests/data/validate) marks the line of each expected finding with `# finding`;
tests/integration/test_validate_corpus.py checks the function answers each with the same words.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rolekeeper import cli
from rolekeeper.validate import (
    DEFAULTS,
    Finding,
    check_template,
    deployment_settings,
    findings,
    load,
    scope_for,
)

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "validate"
WRONG = sorted(CORPUS.glob("wrong-*.yaml"))
MARKED = [*WRONG, CORPUS / "deploy-time.yaml"]
GOOD = [CORPUS / "good.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
FENCE = re.compile(r"^```(yaml|yml|json)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def marked_lines(path: Path) -> list[int]:
    return [
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.rstrip().endswith("# finding")
    ]


def rolekeeper_resources(text: str) -> int:
    return len(re.findall(r"Type: Custom::(ServiceLinkedRole|ServiceRole|SpotFleetKmsGrant)\s*$", text, re.M))


# --- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MARKED, ids=lambda p: p.name)
def test_validate_reports_exactly_the_marked_lines(path: Path) -> None:
    found = findings(path.read_text())
    assert sorted(f.line for f in found) == marked_lines(path), "\n".join(map(str, found))
    per_resource = [f.resource for f in found]
    assert len(per_resource) == len(set(per_resource)), "one mistake per resource"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_validate_accepts_valid_templates_and_the_examples(path: Path) -> None:
    assert findings(path.read_text()) == []


def test_the_valid_templates_hold_every_rolekeeper_type() -> None:
    text = "\n".join(p.read_text() for p in GOOD)
    for kind in ("ServiceLinkedRole", "ServiceRole", "SpotFleetKmsGrant"):
        assert f"Type: Custom::{kind}\n" in text


def snippets(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    return [(text[: m.start(2)].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text)]


def test_validate_accepts_the_readmes_snippets_for_a_default_deployment() -> None:
    checked = [(line, text) for line, text in snippets(ROOT / "README.md") if rolekeeper_resources(text)]
    assert checked
    for line, text in checked:
        assert findings(text) == [], f"README.md:{line}"


def test_validate_accepts_the_docs_snippets_for_the_deployment_they_name() -> None:
    # docs/resource-reference.md says which parameters its tagged and application-role
    # examples need: AllowedTagKeys=team, AllowedManagedPolicyArns=...AmazonSSMManagedInstanceCore.
    named = {"AllowedTagKeys": "team", "AllowedManagedPolicyArns": SSM_CORE}
    checked = 0
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line, text in snippets(page):
            if rolekeeper_resources(text):
                checked += 1
                assert findings(text, named) == [], f"{page.name}:{line}"
    assert checked >= 5


def test_validate_findings_are_the_functions_words_for_the_issues_template() -> None:
    text = """
Resources:
  SpotFleet:
    Type: Custom::ServiceLinkedRole
    Properties:
      ServiceToken: !ImportValue rolekeeper-ServiceToken
      AwsServiceName: spotfleet.amazonaws.com
      OnDelete: Keep
  Ecs:
    Type: Custom::ServiceRole
    Properties:
      ServiceToken: !ImportValue rolekeeper-ServiceToken
      Blueprint: ecs
      Tags: {team: platform}
"""
    assert [str(f) for f in findings(text)] == [
        "7: SpotFleet: AwsServiceName is not a known property: did you mean AWSServiceName? "
        "(known: AWSServiceName, CustomSuffix, Description, OnDelete, Heal)",
        "8: SpotFleet: OnDelete must be Retain or Delete, e.g. OnDelete: Retain",
        "13: Ecs: Blueprint must be one of spot-fleet-tagging, ecs-instance, batch-service, "
        "ec2-application, e.g. Blueprint: ecs-instance",
        "14: Ecs: Tags must be a list of at most 50 {Key, Value} pairs, e.g. Tags: [{Key: team, Value: platform}]",
    ]


# --- JSON templates, short-form tags, template-level findings -------------------------------------


def _expected_on_line(data: Any, path: tuple[str | int, ...]) -> str:
    """What the finding's line must hold: the last key along path the template has (a missing
    property: its parent's), or the list element the path ends at."""
    token, node = "", data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(part, str):
            token = json.dumps(part)
        else:
            token = "{" if isinstance(node, dict) else "[" if isinstance(node, list) else json.dumps(node)
    return token


@pytest.mark.parametrize("indent", [2, "\t"], ids=["spaces", "tabs"])
@pytest.mark.parametrize("path", WRONG, ids=lambda p: p.name)
def test_validate_reads_json_templates_with_lines(path: Path, indent: int | str) -> None:
    data, _ = load(path.read_text())
    text = json.dumps(data, indent=indent)
    as_yaml, as_json = findings(path.read_text()), findings(text)
    assert [f.message for f in as_json] == [f.message for f in as_yaml]
    lines = text.splitlines()
    for finding in as_json:
        assert _expected_on_line(data, finding.path) in lines[finding.line - 1], finding


def test_short_form_intrinsic_functions_parse_and_are_not_judged() -> None:
    tags = [
        "Ref",
        "Sub",
        "GetAtt",
        "If",
        "Join",
        "Select",
        "Split",
        "FindInMap",
        "Base64",
        "Cidr",
        "ImportValue",
        "GetAZs",
        "Equals",
        "And",
        "Or",
        "Not",
        "Condition",
        "Transform",
        "ToJsonString",
        "Length",
    ]
    properties = "\n".join(f"      {name}: !{name} [a, b]" for name in tags)
    text = """Resources:
  Role:
    Type: Custom::ServiceRole
    Properties:
      Blueprint: !Ref Blueprint
      RoleName: !GetAtt Other.RoleName
      Path: !Sub /${Team}/
      Tags: !If [Tagged, [{Key: team, Value: x}], !Ref AWS::NoValue]
      Heal: !Equals [!Ref Env, prod]
      OnDelete: !Select [0, !Split [",", !Ref Choices]]
      ManagedPolicyArns: [!FindInMap [Policies, !Ref AWS::Region, Ssm], !ImportValue policy]
      PermissionsBoundary: !Join [":", [arn, !Ref AWS::Partition, iam, "", !Ref AWS::AccountId, policy/b]]
      InstanceProfile: !Not [!Condition Tagged]
"""
    data, _ = load(text)
    role = data["Resources"]["Role"]["Properties"]
    assert role["Blueprint"] == {"Ref": "Blueprint"}
    assert role["RoleName"] == {"Fn::GetAtt": ["Other", "RoleName"]}
    assert role["InstanceProfile"] == {"Fn::Not": [{"Condition": "Tagged"}]}
    assert findings(text) == []
    every, _ = load(f"R:\n  Type: AWS::X::Y\n  Properties:\n{properties}\n")
    for name in tags:
        long_form = name if name in ("Ref", "Condition") else f"Fn::{name}"
        assert every["R"]["Properties"][name] == {long_form: ["a", "b"]}


def test_a_fragment_of_resources_is_checked_like_a_template() -> None:
    text = "  Ecs:\n    Type: Custom::ServiceRole\n    Properties:\n      Blueprint: ecs\n"
    assert [(f.line, f.resource) for f in findings(text)] == [(4, "Ecs")]


def test_text_that_is_not_a_template_is_one_finding_at_its_line() -> None:
    (found,) = findings("Resources:\n  Ecs:\n    Type: [Custom::ServiceRole\n")
    assert found.line == 4
    assert found.message.startswith("not a CloudFormation template (YAML or JSON)")


def test_an_unknown_metadata_parameter_is_a_finding() -> None:
    text = "Metadata:\n  rolekeeper:\n    AllowedTagKey: team\nResources: {}\n"
    assert [str(f) for f in findings(text)] == [
        "3: Metadata.rolekeeper.AllowedTagKey is not a parameter rolekeeper's checks depend on "
        "(known: AllowedServiceNames, AllowedManagedPolicyArns, ApplicationRoleNamePrefix, AllowedTagKeys, "
        "AllowedPermissionsBoundaryArns)"
    ]


def test_the_callers_parameters_win_over_the_templates_metadata() -> None:
    text = (CORPUS / "wrong-for-this-deployment.yaml").read_text()
    given = {"AllowedServiceNames": "spotfleet.amazonaws.com", "ApplicationRoleNamePrefix": "app-"}
    assert {f.resource for f in findings(text, given)} == {"CostCenterTag", "SsmPolicy", "TagColour"}


def test_the_partition_comes_from_the_region() -> None:
    template = {
        "Resources": {
            "R": {
                "Type": "Custom::ServiceRole",
                "Properties": {
                    "Blueprint": "ecs-instance",
                    "PermissionsBoundary": "arn:aws-cn:iam::aws:policy/PowerUserAccess",
                },
            }
        }
    }
    allowed = {"AllowedPermissionsBoundaryArns": "arn:aws-cn:iam::aws:policy/PowerUserAccess"}
    assert [f.message for f in check_template(template, allowed, region="cn-north-1")] == []
    (wrong,) = check_template(template, allowed, region="eu-west-1")
    assert wrong.message.startswith(
        "arn:aws-cn:iam::aws:policy/PowerUserAccess is not in this partition (aws)"
    )
    assert scope_for("us-gov-west-1").partition == "aws-us-gov"


# --- the deployment's parameters are template.yaml's ------------------------------------------------


def template_yaml() -> dict[str, Any]:
    data, _ = load((ROOT / "template.yaml").read_text())
    return data


def test_defaults_are_template_yaml_parameter_defaults() -> None:
    parameters = template_yaml()["Parameters"]
    assert {name: str(parameters[name]["Default"]) for name in DEFAULTS} == DEFAULTS


def _evaluate(value: Any, parameters: dict[str, Any]) -> Any:
    """The few intrinsic functions template.yaml's Globals use to pass parameters to the functions."""
    if isinstance(value, dict) and "Ref" in value:
        return parameters[value["Ref"]]
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, items = value["Fn::Join"]
        return separator.join(_evaluate(items, parameters))
    if isinstance(value, dict) and "Fn::Sub" in value:
        return re.sub(r"\$\{(\w+)\}", lambda m: str(parameters[m.group(1)]), value["Fn::Sub"])
    return value


@pytest.mark.parametrize(
    "given",
    [
        {},
        {
            "AllowedServiceNames": "spot.amazonaws.com,batch.amazonaws.com",
            "AllowedManagedPolicyArns": f"{SSM_CORE},arn:aws:iam::123456789012:policy/mine",
            "ApplicationRoleNamePrefix": "team-",
            "AllowedTagKeys": "team,cost-center",
        },
    ],
    ids=["defaults", "custom"],
)
def test_deployment_settings_are_what_template_yaml_gives_the_function(
    given: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolekeeper.config import settings

    template = template_yaml()
    parameters: dict[str, Any] = {**DEFAULTS, **given}
    parameters["AllowedServiceNames"] = parameters["AllowedServiceNames"].split(",")  # CommaDelimitedList
    environment = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in (
        "ALLOWED_SERVICE_NAMES",
        "ALLOWED_MANAGED_POLICY_ARNS",
        "ALLOWED_ROLE_NAMES",
        "ALLOWED_TAG_KEYS",
    ):
        monkeypatch.setenv(name, _evaluate(environment[name], parameters))
    settings.cache_clear()
    try:
        function = settings()
    finally:
        settings.cache_clear()
    mine = deployment_settings(given)
    for field in (
        "allowed_service_names",
        "allowed_managed_policy_arns",
        "allowed_role_names",
        "allowed_tag_keys",
    ):
        assert getattr(mine, field) == getattr(function, field), field


# --- the command ------------------------------------------------------------------------------------


def test_cli_validate_exits_0_when_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", *map(str, GOOD)]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "0 findings" in out.err


def test_cli_validate_exits_1_with_a_line_per_finding(capsys: pytest.CaptureFixture[str]) -> None:
    path = CORPUS / "wrong-service-linked-roles.yaml"
    assert cli.main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(marked_lines(path))
    assert lines[0] == (
        f"{path}:8: Typo: AwsServiceName is not a known property: did you mean AWSServiceName? "
        "(known: AWSServiceName, CustomSuffix, Description, OnDelete, Heal)"
    )


def test_cli_validate_takes_the_deployments_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CORPUS / "wrong-for-this-deployment.yaml")
    wide = ["--allowed-service-names", "spotfleet.amazonaws.com"]
    wide += ["--allowed-tag-keys", "cost-center,team", "--allowed-managed-policy-arns"]
    wide += [f"{SSM_CORE},arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"]
    assert cli.main(["validate", *wide, path]) == 1
    # AppPrefix: the template's ApplicationRoleNamePrefix still holds; TagColour: no parameter allows Colour.
    assert [line.split(": ")[1] for line in capsys.readouterr().out.splitlines()] == [
        "AppPrefix",
        "TagColour",
    ]


def test_cli_validate_exits_2_for_a_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(GOOD[0]), str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


# --- the cfn-lint rule, loaded as users load it ------------------------------------------------------


def cfn_lint(*args: str, cwd: Path = ROOT) -> tuple[int, set[tuple[str, int, str]]]:
    """cfn-lint with rolekeeper's rule from its import path, as `make lint` runs it."""
    executable = Path(sys.executable).parent / "cfn-lint"
    if not executable.exists():
        pytest.skip("cfn-lint is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [str(executable), "--format", "parseable", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    matches = set()
    for line in done.stdout.splitlines():
        file, number, _col, _end, _endcol, rule, message = line.split(":", 6)
        if rule == "E9101":
            matches.add((str(Path(cwd, file).resolve()), int(number), message))
    assert done.returncode in (0, 2), done.stderr
    return done.returncode, matches


def test_cfn_lint_rule_reports_what_rolekeeper_validate_reports() -> None:
    files = [*MARKED, *GOOD]
    _code, matches = cfn_lint("--append-rules", "rolekeeper.cfnlint_rules", "--", *map(str, files))
    expected = {(str(p.resolve()), f.line, f.message) for p in files for f in findings(p.read_text())}
    assert len(expected) == sum(len(marked_lines(p)) for p in MARKED)
    assert matches == expected


def test_cfn_lint_rule_passes_the_examples_as_make_lint_runs_it() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    code, matches = cfn_lint("--append-rules", "rolekeeper.cfnlint_rules", "--", *examples)
    assert (code, matches) == (0, set())


def test_cfn_lint_rule_reads_the_deployments_parameters_from_cfnlintrc(tmp_path: Path) -> None:
    template = tmp_path / "stack.yaml"
    template.write_text(
        "Resources:\n  Ecs:\n    Type: Custom::ServiceRole\n    Properties:\n"
        "      ServiceToken: !ImportValue rolekeeper-ServiceToken\n      Blueprint: ecs-instance\n"
        "      Tags: [{Key: team, Value: platform}]\n"
    )
    (tmp_path / ".cfnlintrc").write_text("append_rules: [rolekeeper.cfnlint_rules]\n")
    _code, refused = cfn_lint("stack.yaml", cwd=tmp_path)
    assert [m[1] for m in refused] == [7]
    (tmp_path / ".cfnlintrc").write_text(
        "append_rules: [rolekeeper.cfnlint_rules]\nconfigure_rules:\n  E9101:\n    AllowedTagKeys: [env, team]\n"
    )
    assert cfn_lint("stack.yaml", cwd=tmp_path) == (0, set())


def test_finding_prints_its_line_and_resource() -> None:
    assert str(Finding(("Resources", "R"), "m", "R", 3)) == "3: R: m"


def test_reasons_name_only_template_parameters_that_exist() -> None:
    """A Reason once told users to change AllowedRoleNames, a parameter template.yaml does not have."""
    source = (ROOT / "src" / "rolekeeper" / "domain" / "validation.py").read_text()
    named = set(re.findall(r"\b(Allowed[A-Z]\w*|Application[A-Z]\w*)\b", source))
    assert named == {
        "AllowedServiceNames",
        "AllowedManagedPolicyArns",
        "AllowedTagKeys",
        "AllowedPermissionsBoundaryArns",
        "ApplicationRoleNamePrefix",
    }
    assert named <= set(template_yaml()["Parameters"])


@pytest.mark.parametrize(
    ("kind", "flagged"),
    [
        ("Custom::ServiceRoles", True),
        ("custom::servicerole", True),
        ("Custom::ServiseRole", True),
        ("Custom::SpotFleetKmsGrants", True),
        ("Custom::ServiceRoleV2", False),
        ("Custom::RoleKeeper", False),
        ("AWS::IAM::ServiceLinkedRole", False),
    ],
)
def test_a_misspelt_rolekeeper_type_is_a_finding_and_other_types_are_left_alone(
    kind: str, flagged: bool
) -> None:
    template = {"Resources": {"R": {"Type": kind, "Properties": {"Blueprint": "ecs"}}}}
    found = check_template(template)
    assert [f.message.startswith(f"ResourceType {kind!r} is not served here") for f in found] == (
        [True] if flagged else []
    )
