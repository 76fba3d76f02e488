"""The organization release: the packaged template (make package) deployed with moto's
CloudFormation into three accounts and through a service-managed StackSet.

What moto cannot do here, and what is checked instead:
- CloudFormation: AWS::CloudWatch::Alarm, AWS::SQS::QueuePolicy, AWS::Lambda::EventInvokeConfig
  and AWS::IAM::RolePolicy are skipped by moto (listed CREATE_COMPLETE with no logical id or type);
  the alarms are checked in the packaged template instead.
- moto's Fn::Join over a CommaDelimitedList parameter joins its characters (CloudFormation joins
  the items); ALLOWED_SERVICE_NAMES is not asserted on the deployed function for that reason.
- StackSets: AutoDeployment (an account joining the OU) is not implemented by moto.
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from tools.devkit.events import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TRANSLATOR = ROOT / ".venv-tools" / "translator" / "bin" / "python"
PREFIX = "acme-rolekeeper"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not TRANSLATOR.exists():
        pytest.fail(f"{TRANSLATOR} missing: `make test` installs it (aws-sam-translator, own venv)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [str(TRANSLATOR), "-m", "tools.package", "--template-only", "--out", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )
    (path,) = out.glob("rolekeeper-*.template.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def session(account: str) -> boto3.Session:
    """Into another moto account as StackSets does: sts:AssumeRole its execution role."""
    credentials = boto3.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/AWSCloudFormationStackSetExecutionRole",
        RoleSessionName="stacksets",
    )["Credentials"]
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=REGION,
    )


def parameters(**values: str) -> list[dict[str, str]]:
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


# Per account: different parameters, to see each applied where it was given.
ACCOUNT_PARAMETERS = [
    {
        "HealMode": "heal",
        "ReconcileSchedule": "rate(6 hours)",
        "HealRateLimit": "5",
        "ServiceTokenExportName": "rolekeeper-ServiceToken",
    },
    {"HealMode": "report", "ReconcileSchedule": "rate(1 hour)", "HealRateLimit": "3"},
    {
        "HealMode": "heal",
        "ReconcileSchedule": "rate(12 hours)",
        "HealRateLimit": "7",
        "OrgEventBusArn": f"arn:aws:events:{REGION}:123456789012:event-bus/rolekeeper-org",
    },
]


@pytest.fixture(scope="module")
def organization(packaged: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One organization, three member accounts each deployed once (module-scoped: shared)."""
    with mock_aws():
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("rolekeeper/__init__.py", "")
        key = packaged["Parameters"]["ArtifactKey"]["Default"]
        # One bucket, in the management account (Lambda reads it across accounts, as with the
        # organization's bucket policy).
        boto3.client("s3").create_bucket(Bucket=f"{PREFIX}-{REGION}")
        boto3.client("s3").put_object(Bucket=f"{PREFIX}-{REGION}", Key=key, Body=code.getvalue())
        org = boto3.client("organizations")
        org_id = org.create_organization(FeatureSet="ALL")["Organization"]["Id"]
        root = org.list_roots()["Roots"][0]["Id"]
        ou = org.create_organizational_unit(ParentId=root, Name="workloads")["OrganizationalUnit"]["Id"]
        accounts = []
        for i in range(3):
            account = org.create_account(AccountName=f"workload-{i}", Email=f"workload-{i}@example.com")
            account_id = account["CreateAccountStatus"]["AccountId"]
            org.move_account(AccountId=account_id, SourceParentId=root, DestinationParentId=ou)
            accounts.append(account_id)
        body = json.dumps(packaged)
        for account_id, values in zip(accounts, ACCOUNT_PARAMETERS, strict=True):
            session(account_id).client("cloudformation").create_stack(
                StackName="rolekeeper",
                TemplateBody=body,
                Capabilities=["CAPABILITY_IAM"],
                Parameters=parameters(ArtifactBucketPrefix=PREFIX, **values),
            )
        yield {"org_id": org_id, "root": root, "ou": ou, "accounts": accounts, "body": body, "key": key}


def test_packaged_template_is_plain_cloudformation(packaged: dict[str, Any]) -> None:
    assert "Transform" not in packaged
    assert not [r for r in packaged["Resources"].values() if r["Type"].startswith("AWS::Serverless::")]
    functions = [r for r in packaged["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert len(functions) == 2
    for function in functions:
        properties = function["Properties"]
        assert properties["Code"] == {
            "S3Bucket": {"Fn::Sub": "${ArtifactBucketPrefix}-${AWS::Region}"},
            "S3Key": {"Ref": "ArtifactKey"},
        }
        assert (properties["Runtime"], properties["Architectures"]) == ("python3.13", ["arm64"])
    version = packaged["Parameters"]["ArtifactKey"]["Default"].split("/")[1]
    assert packaged["Parameters"]["ArtifactKey"]["Default"] == (
        f"rolekeeper/{version}/rolekeeper-{version}-arm64.zip"
    )
    # Every parameter of template.yaml is kept.
    sam = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506
    assert set(sam["Parameters"]) <= set(packaged["Parameters"])


def test_three_accounts_each_have_the_stack_with_its_parameters(organization: dict[str, Any]) -> None:
    for account_id, values in zip(organization["accounts"], ACCOUNT_PARAMETERS, strict=True):
        member = session(account_id)
        assert member.client("sts").get_caller_identity()["Account"] == account_id
        stack = member.client("cloudformation").describe_stacks(StackName="rolekeeper")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        functions = {f["FunctionName"]: f for f in member.client("lambda").list_functions()["Functions"]}
        assert len(functions) == 2, functions
        tables = member.client("dynamodb").list_tables()["TableNames"]
        assert len(tables) == 1 and tables[0].startswith("rolekeeper-RegistryTable")
        for function in functions.values():
            assert function["Runtime"] == "python3.13"
            env = function["Environment"]["Variables"]
            assert env["REGISTRY_TABLE_NAME"] == tables[0]
            assert env["HEAL_MODE"] == values["HealMode"]
            assert str(env["HEAL_RATE_LIMIT"]) == values["HealRateLimit"]
            assert function["FunctionArn"].split(":")[4] == account_id
        healer = next(f for name, f in functions.items() if "HealerFunction" in name)
        assert healer["Environment"]["Variables"]["ORG_EVENT_BUS_ARN"] == values.get("OrgEventBusArn", "")
        rules = member.client("events").list_rules()["Rules"]
        assert (
            len(rules) == 4
        )  # IAM events, KMS events, the reconcile, the provisioner settling what is pending
        assert {r.get("ScheduleExpression") for r in rules} == {None, values["ReconcileSchedule"]}
        patterns = [json.loads(r["EventPattern"]) for r in rules if r.get("EventPattern")]
        assert sorted(p["source"][0] for p in patterns) == ["aws.iam", "aws.kms"]
        exports = {e["Name"]: e["Value"] for e in member.client("cloudformation").list_exports()["Exports"]}
        export = values.get("ServiceTokenExportName", "rolekeeper-ServiceToken")
        assert exports[export] == next(f["FunctionArn"] for n, f in functions.items() if "Provisioner" in n)
        queues = member.client("sqs").list_queues()["QueueUrls"]
        assert len(queues) == 1 and f"/{account_id}/" in queues[0]


def test_alarms_in_the_packaged_template(packaged: dict[str, Any]) -> None:
    """moto's CloudFormation does not create alarms: their definitions are checked here."""
    resources = packaged["Resources"]
    assert resources["FailureAlarm"]["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert resources["HealSuppressedAlarm"]["Properties"]["MetricName"] == "HealSuppressed"


def test_service_managed_stack_set_reaches_the_ou(organization: dict[str, Any]) -> None:
    cloudformation = boto3.client("cloudformation")
    org = boto3.client("organizations")
    ou = org.create_organizational_unit(ParentId=organization["root"], Name="stackset")["OrganizationalUnit"][
        "Id"
    ]
    joined = org.create_account(AccountName="joined", Email="joined@example.com")["CreateAccountStatus"][
        "AccountId"
    ]
    org.move_account(AccountId=joined, SourceParentId=organization["root"], DestinationParentId=ou)
    cloudformation.create_stack_set(
        StackSetName="rolekeeper",
        TemplateBody=organization["body"],
        Capabilities=["CAPABILITY_IAM"],
        PermissionModel="SERVICE_MANAGED",
        AutoDeployment={"Enabled": True, "RetainStacksOnAccountRemoval": False},
        Parameters=parameters(
            ArtifactBucketPrefix=PREFIX, HealMode="report", ServiceTokenExportName="rolekeeper-ServiceToken"
        ),
    )
    operation = cloudformation.create_stack_instances(
        StackSetName="rolekeeper", DeploymentTargets={"OrganizationalUnitIds": [ou]}, Regions=[REGION]
    )["OperationId"]
    status = cloudformation.describe_stack_set_operation(StackSetName="rolekeeper", OperationId=operation)
    assert status["StackSetOperation"]["Status"] == "SUCCEEDED"
    instances = cloudformation.list_stack_instances(StackSetName="rolekeeper")["Summaries"]
    assert [(i["Account"], i["Region"], i["Status"]) for i in instances] == [(joined, REGION, "CURRENT")]
    member = session(joined)
    functions = member.client("lambda").list_functions()["Functions"]
    assert len(functions) == 2
    # moto keeps StackSet instances' stacks (and exports) out of the member account's
    # CloudFormation; the export name parameter is checked on the direct deployments above.
    assert {f["Environment"]["Variables"]["HEAL_MODE"] for f in functions} == {"report"}


class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: {
        suffix: loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_mapping(node)
    },
)
