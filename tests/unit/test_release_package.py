"""The organization release (make package): a template that fits the way the docs deploy it, and
that runs only the code whose SHA-256 it names.

tools.package runs in its own venv (aws-sam-translator pins pydantic), so it is run as the Makefile
runs it, with `--code-zip` instead of building the zip (a build needs PyPI; the hashing and pinning
after it are the same code). The moto deployments at the end need one AWS fact moto does not model:
PublishVersion's CodeSha256 precondition (see `lambda_checks_code_sha256`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shlex
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tools.devkit.events import ROOT

TRANSLATOR = ROOT / ".venv-tools" / "translator" / "bin" / "python"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
TEMPLATE = f"rolekeeper-{VERSION}.template.json"
ZIP = f"rolekeeper-{VERSION}-arm64.zip"

# CloudFormation quotas (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html):
# "Template body size in a request" 51,200 bytes (CreateStack, UpdateStack, CreateStackSet's
# TemplateBody; `aws cloudformation deploy --template-file` without --s3-bucket sends the body);
# TemplateURL: "The URL must point to a template (max size: 1 MB) that's located in an Amazon S3
# bucket" (API reference, CreateStackSet and friends). 1 MB is taken as 1,000,000 bytes here.
TEMPLATE_BODY_LIMIT = 51_200
TEMPLATE_URL_LIMIT = 1_000_000


def code_zip(text: str) -> bytes:
    """A small, deterministic stand-in for the code zip."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo("rolekeeper/__init__.py", (1980, 1, 1, 0, 0, 0)), text)
    return out.getvalue()


def package(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not TRANSLATOR.exists():
        pytest.fail(f"{TRANSLATOR} missing: `make test` installs it (aws-sam-translator, own venv)")
    return subprocess.run(
        [str(TRANSLATOR), "-m", "tools.package", "--out", str(out), *args],
        cwd=ROOT,
        check=True,
        timeout=180,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`make package` with a given zip: dist/ as a publisher gets it."""
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("build") / "code.zip"
    source.write_bytes(code_zip("RELEASE = 'the publisher's build'\n"))
    package(out, "--code-zip", str(source))
    text = (out / TEMPLATE).read_text()
    return {
        "out": out,
        "text": text,
        "template": json.loads(text),
        "zip": (out / ZIP).read_bytes(),
        "publish": (out / "PUBLISH.md").read_text(),
    }


# --- the template fits the documented deploy path ------------------------------------------------


def _commands(markdown: str) -> list[list[str]]:
    """Shell commands in fenced blocks and `inline code` (continuation lines joined)."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", markdown, re.S)
    blocks += re.findall(r"`(aws [^`]+)`", markdown)
    commands = []
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = line.split(" #", 1)[0].strip()
            if command.startswith("aws "):
                commands.append(shlex.split(command, posix=True))
    return commands


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _documents(release: dict[str, Any]) -> dict[str, str]:
    docs = {"README.md": (ROOT / "README.md").read_text(), "dist/PUBLISH.md": release["publish"]}
    docs |= {f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
    forwarder = subprocess.run(
        ["make", "--no-print-directory", "-n", "forwarder", "REGION=eu-west-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs["make forwarder"] = f"```\n{forwarder.stdout}```"
    return docs


def _local_template(path: str, release: dict[str, Any]) -> bytes:
    if Path(path).name == TEMPLATE:
        return release["text"].encode()
    return (ROOT / path).read_bytes()


def test_every_documented_deploy_command_fits_its_template_size_limit(release):
    checked = []
    for doc, text in _documents(release).items():
        for command in _commands(text):
            if command[1:3] not in (
                ["cloudformation", "create-stack-set"],
                ["cloudformation", "update-stack-set"],
                ["cloudformation", "create-stack"],
                ["cloudformation", "deploy"],
            ):
                continue
            body = _option(command, "--template-body") or _option(command, "--template-file")
            url = _option(command, "--template-url")
            if body and _option(command, "--s3-bucket") is None:
                size = len(_local_template(body.removeprefix("file://"), release))
                assert size <= TEMPLATE_BODY_LIMIT, (doc, command[:3], body, size)
                checked.append((doc, "body", body))
            elif url:
                assert Path(url).name == TEMPLATE or url.startswith("<"), (doc, url)
                size = len(release["text"].encode())
                assert size <= TEMPLATE_URL_LIMIT, (doc, url, size)
                checked.append((doc, "url", url))
    # The release's own path: uploaded to S3, deployed with --template-url (both documents).
    for doc in ("dist/PUBLISH.md", "docs/organization-rollout.md"):
        assert (doc, "url") in {(d, kind) for d, kind, _ in checked}, doc
    assert ("make forwarder", "body", "examples/iam-events-forwarder.yaml") in checked


def test_stack_set_template_url_is_where_publish_uploads_it_next_to_the_code(release):
    commands = _commands(release["publish"])
    uploads = {
        _option(c, "--key"): _option(c, "--body") for c in commands if c[1:3] == ["s3api", "put-object"]
    }
    (url,) = [
        _option(c, "--template-url") for c in commands if c[1:3] == ["cloudformation", "create-stack-set"]
    ]
    key = url.split(".amazonaws.com/", 1)[1]
    assert uploads[key] == f"dist/{TEMPLATE}"
    (code_key,) = [k for k, body in uploads.items() if body == f"dist/{ZIP}"]
    assert code_key == release["template"]["Parameters"]["ArtifactKey"]["Default"]
    assert Path(key).parent == Path(code_key).parent
    assert url.startswith("https://$PREFIX-$HOME_REGION.s3.$HOME_REGION.amazonaws.com/")


def test_publish_commands_write_only_to_the_publishers_own_buckets(release):
    # S3 answers 403 to a request whose --expected-bucket-owner is not the bucket's owner: a bucket
    # someone else created under the release's name is never written to or configured.
    commands = [c for c in _commands(release["publish"]) if c[1] == "s3api"]
    assert {c[2] for c in commands} >= {
        "head-bucket",
        "put-public-access-block",
        "put-bucket-policy",
        "put-object",
    }
    for command in commands:
        if command[2] != "create-bucket":
            assert _option(command, "--expected-bucket-owner") == "$OWNER", command
    (zip_upload,) = [c for c in commands if c[2] == "put-object" and _option(c, "--body") == f"dist/{ZIP}"]
    assert (
        _option(zip_upload, "--checksum-sha256")
        == base64.b64encode(hashlib.sha256(release["zip"]).digest()).decode()
    )


def test_packaged_template_is_compact(release):
    text = release["text"]
    assert text == json.dumps(json.loads(text), separators=(",", ":"))
    template = release["template"]
    assert "Transform" not in template and "Metadata" not in template
    for name, resource in template["Resources"].items():
        # Only the checkov skips `make lint` reads, on the resources they are about.
        assert set(resource.get("Metadata", {})) <= {"checkov"}, name
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig":
            assert "Metadata" not in resource, name


# --- the template runs only the code it names ---------------------------------------------------


def _refers(value: Any, name: str) -> bool:
    text = json.dumps(value)
    return f'{{"Ref": "{name}"}}' in text or f'"Fn::GetAtt": ["{name}"' in text


def test_packaged_template_pins_each_function_to_the_zips_sha256(release):
    resources = release["template"]["Resources"]
    expected = base64.b64encode(hashlib.sha256(release["zip"]).digest()).decode()
    functions = [n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function"]
    versions = {
        r["Properties"]["FunctionName"]["Ref"]: (n, r)
        for n, r in resources.items()
        if r["Type"] == "AWS::Lambda::Version"
    }
    assert sorted(versions) == sorted(functions) == ["HealerFunction", "ProvisionerFunction"]
    for function, (_, version) in versions.items():
        assert version["Properties"]["CodeSha256"] == expected, function
        # A changed code location replaces the version, so the new code is checked again.
        description = version["Properties"]["Description"]["Fn::Sub"]
        assert "${ArtifactBucketPrefix}-${AWS::Region}/${ArtifactKey}" in description
        # Lambda takes at most 256 characters: the longest prefix, region name and key fit.
        parameters = release["template"]["Parameters"]
        longest = description.replace("${ArtifactBucketPrefix}", "p" * 42).replace(
            "${AWS::Region}", "ap-southeast-5"
        )
        assert len(longest.replace("${ArtifactKey}", "k" * parameters["ArtifactKey"]["MaxLength"])) <= 256
        assert re.fullmatch(parameters["ArtifactBucketPrefix"]["AllowedPattern"], "p" * 42)
        assert not re.fullmatch(parameters["ArtifactBucketPrefix"]["AllowedPattern"], "p" * 43)
    assert "sha256" not in release["template"]["Parameters"]["ArtifactKey"].get("Description", "").lower()
    assert hashlib.sha256(release["zip"]).hexdigest() in release["publish"]
    assert expected in release["publish"]


def test_nothing_can_run_the_code_with_rolekeepers_rights_before_its_hash_is_checked(release):
    resources = release["template"]["Resources"]
    for function, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        version = f"{function}Version"
        role = resource["Properties"]["Role"]["Fn::GetAtt"][0]
        properties = resources[role]["Properties"]
        # The role starts with AWS's logging policy only: no inline policy, no policy of the stack.
        assert "Policies" not in properties, role
        assert properties["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        ], role
        rights = [n for n, r in resources.items() if n != function and _refers(r, role)]
        assert {resources[n]["Type"] for n in rights} == {"AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"}
        assert len(rights) >= 2, rights
        invokers = [n for n, r in resources.items() if n not in (version, *rights) and _refers(r, function)]
        assert invokers if function == "HealerFunction" else True
        for name in [*rights, *invokers]:
            assert version in resources[name].get("DependsOn", []), name
        for name in invokers:
            unconditional = [n for n in rights if "Condition" not in resources[n]]
            assert set(unconditional) <= set(resources[name]["DependsOn"]), name
    # Every IAM document that granted the functions rights before is still granted, after the check.
    documents = {
        r["Properties"]["PolicyName"]
        for r in resources.values()
        if r["Type"] == "AWS::IAM::RolePolicy" and "PolicyName" in r["Properties"]
    }
    assert {
        "ProvisionerFunctionRolePolicy1",
        "HealerFunctionRolePolicy1",
        "PublishToOrgEventBus",
    } <= documents


def test_template_only_pins_no_code_at_all(tmp_path: Path):
    # For lint and tests: the SHA-256 of empty content, which no zip has, so it deploys nothing.
    package(tmp_path, "--template-only")
    template = json.loads((tmp_path / TEMPLATE).read_text())
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    pins = {
        r["Properties"]["CodeSha256"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Version"
    }
    assert pins == {empty}
    assert sorted(p.name for p in tmp_path.iterdir()) == [TEMPLATE]


# --- deployed under moto -------------------------------------------------------------------------

PREFIX = "acme-rolekeeper"


@pytest.fixture
def lambda_checks_code_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    """PublishVersion's CodeSha256 precondition, which moto ignores (its AWS::Lambda::Version
    publishes whatever $LATEST holds). AWS: "Only publish a version if the hash value matches the
    value that's specified" (Lambda API reference, PublishVersion; AWS::Lambda::Version CodeSha256:
    it "must match the SHA-256 hash of the $LATEST version of the function"); Lambda answers
    InvalidParameterValueException "CodeSHA256 (<given>) is different from current CodeSHA256 in
    $LATEST (<actual>). Please try again with the CodeSHA256 in $LATEST." (as quoted in
    serverless/serverless#3696 and justinram11/serverless-aws-batch#22)."""
    from moto.awslambda.exceptions import InvalidParameterValueException
    from moto.awslambda.models import LambdaVersion, lambda_backends

    create = LambdaVersion.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def checked(
        cls: Any,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> Any:
        properties = cloudformation_json["Properties"]
        wanted = properties.get("CodeSha256")
        function = lambda_backends[account_id][region_name].get_function(properties["FunctionName"])
        if wanted is not None and wanted != function.code_sha_256:
            raise InvalidParameterValueException(
                f"CodeSHA256 ({wanted}) is different from current CodeSHA256 in $LATEST "
                f"({function.code_sha_256}). Please try again with the CodeSHA256 in $LATEST."
            )
        return create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    monkeypatch.setattr(LambdaVersion, "create_from_cloudformation_json", classmethod(checked))


@pytest.fixture
def aws(lambda_checks_code_sha256: None) -> Iterator[None]:
    with mock_aws():
        yield


def publish(region: str, body: bytes, key: str) -> None:
    s3 = boto3.client("s3", region_name=region)
    options = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=f"{PREFIX}-{region}", **options)  # type: ignore[arg-type]
    s3.put_object(Bucket=f"{PREFIX}-{region}", Key=key, Body=body)


def deploy(template: str, region: str, **parameters: str) -> str:
    """The stack's status, or the error CloudFormation stopped on (moto raises it from CreateStack
    instead of rolling the stack back)."""
    cloudformation = boto3.client("cloudformation", region_name=region)
    try:
        cloudformation.create_stack(
            StackName="rolekeeper",
            TemplateBody=template,
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[
                {"ParameterKey": k, "ParameterValue": v}
                for k, v in {"ArtifactBucketPrefix": PREFIX, **parameters}.items()
            ],
        )
    except Exception as error:  # the failed resource's error, as moto reports it
        return str(error)
    return str(cloudformation.describe_stacks(StackName="rolekeeper")["Stacks"][0]["StackStatus"])


def outputs(region: str) -> dict[str, str]:
    stack = boto3.client("cloudformation", region_name=region).describe_stacks(StackName="rolekeeper")[
        "Stacks"
    ][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def function_roles(region: str) -> dict[str, list[str]]:
    """Each function's role and the customer managed policies attached to it."""
    iam = boto3.client("iam", region_name=region)
    attached = {}
    for function in boto3.client("lambda", region_name=region).list_functions()["Functions"]:
        role = function["Role"].rsplit("/", 1)[1]
        policies = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        attached[role] = sorted(p["PolicyName"] for p in policies if ":aws:policy/" not in p["PolicyArn"])
    return attached


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_deploy_with_the_released_zip_succeeds_and_grants_the_rights(release, aws):
    key = release["template"]["Parameters"]["ArtifactKey"]["Default"]
    publish("us-east-1", release["zip"], key)
    assert deploy(release["text"], "us-east-1") == "CREATE_COMPLETE"
    lambda_ = boto3.client("lambda", region_name="us-east-1")
    expected = base64.b64encode(hashlib.sha256(release["zip"]).digest()).decode()
    for function in lambda_.list_functions()["Functions"]:
        versions = lambda_.list_versions_by_function(FunctionName=function["FunctionName"])["Versions"]
        assert [v["Version"] for v in versions] == ["$LATEST", "1"]
        assert {v["CodeSha256"] for v in versions} == {expected}
    roles = function_roles("us-east-1")
    assert len(roles) == 2 and all(
        any("ConvergePolicy" in p for p in policies) for policies in roles.values()
    ), roles
    assert outputs("us-east-1")["HealLatency"] == "seconds (IAM events)"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_deploy_where_the_bucket_holds_another_zip_fails_before_the_code_gets_any_right(release, aws):
    # The bucket in eu-central-1 is someone else's, with their own code under the release's key.
    key = release["template"]["Parameters"]["ArtifactKey"]["Default"]
    publish("eu-central-1", code_zip("import os  # not the publisher's code\n"), key)
    outcome = deploy(release["text"], "eu-central-1")
    assert "is different from current CodeSHA256 in $LATEST" in outcome, outcome
    # Nothing that grants rolekeeper's rights or invokes the function was created.
    assert function_roles("eu-central-1") and not any(function_roles("eu-central-1").values())
    assert boto3.client("events", region_name="eu-central-1").list_rules()["Rules"] == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("region", "parameters", "latency"),
    [
        ("eu-west-1", {}, "up to rate(6 hours) (scheduled reconcile); deploy the forwarder for seconds"),
        (
            "eu-west-1",
            {"ReconcileSchedule": "rate(1 hour)"},
            "up to rate(1 hour) (scheduled reconcile); deploy the forwarder for seconds",
        ),
        ("us-east-1", {"HealMode": "report"}, "never (HealMode report; drift is only reported)"),
    ],
)
def test_heal_latency_output_states_what_this_deployment_gets(release, aws, region, parameters, latency):
    publish(region, release["zip"], release["template"]["Parameters"]["ArtifactKey"]["Default"])
    assert deploy(release["text"], region, **parameters) == "CREATE_COMPLETE"
    assert outputs(region)["HealLatency"] == latency
