"""make package: the StackSets-ready release artifact, made offline (no AWS call).

- dist/rolekeeper-<version>.template.json: template.yaml with the SAM transform applied by
  aws-sam-translator (the library `sam` itself uses), so no `Transform` is left and StackSets'
  execution role can deploy it; minified JSON (it is uploaded to S3 and deployed with
  --template-url). Both functions' code comes from S3 through two parameters, ArtifactBucketPrefix
  and ArtifactKey, read from `<prefix>-<region>` so one template serves every region, and the
  template pins that code: it names the zip's SHA-256 (pin_code below), so a different zip in a
  bucket fails the deployment instead of running with rolekeeper's IAM rights.
- dist/rolekeeper-<version>-arm64.zip: the code for python3.13 on arm64, as `sam build` makes it
  for a pure pip build (manylinux2014_aarch64 wheels, src/requirements.txt, then src/rolekeeper).
- dist/bucket-policy.json and dist/PUBLISH.md: the bucket policy (read-only, to the organization
  through aws:PrincipalOrgID) and the exact `aws` commands that publish both.

Runs in its own venv (.venv-tools/translator: aws-sam-translator pins pydantic, which the project's
dev venv must not take from it). `--code-zip ZIP` pins and ships a zip built elsewhere instead of
building one; `--template-only` writes only the template (lint and tests), pinned to the SHA-256
of empty content, which no zip has: that template deploys no code at all.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_BUCKET = "rolekeeper-package-placeholder"
# The bucket in each region is <ArtifactBucketPrefix>-<region>: Lambda reads code only from a
# bucket in the function's own region.
CODE = {
    "S3Bucket": {"Fn::Sub": "${ArtifactBucketPrefix}-${AWS::Region}"},
    "S3Key": {"Ref": "ArtifactKey"},
}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def artifact_key(ver: str) -> str:
    return f"rolekeeper/{ver}/rolekeeper-{ver}-arm64.zip"


# --- the template ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """CloudFormation YAML: short-form intrinsics (!Ref, !Sub, !GetAtt ...) to their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    from tools.policies import construct_node

    value = construct_node(loader, node)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _intrinsic)
# YAML 1.1 would read `on`/`yes` as booleans; CloudFormation reads them as strings.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        [_first],
    )


def load_sam_template(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    return data


class _NoManagedPolicyNames:
    """The template names no managed policy by its short name; nothing to look up in IAM."""

    def load(self) -> dict[str, str]:
        return {}


def translate(sam: dict[str, Any], ver: str) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, with code from S3 through parameters."""
    from samtranslator.translator.transform import transform

    fragment = copy.deepcopy(sam)
    fragment.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    functions = [
        name
        for name, resource in fragment["Resources"].items()
        if resource.get("Type") == "AWS::Serverless::Function"
    ]
    for name in functions:
        fragment["Resources"][name]["Properties"]["CodeUri"] = {
            "Bucket": PLACEHOLDER_BUCKET,
            "Key": "code.zip",
        }
    # The translator wants a region for its pseudo parameters; it decides only the partition of
    # the AWS managed policy ARNs it writes (aws, for every commercial region). Checked below: no
    # region name is left in the output.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    out = transform(fragment, {}, _NoManagedPolicyNames())  # type: ignore[arg-type]
    for resource in out["Resources"].values():
        if resource.get("Type") == "AWS::Lambda::Function":
            resource["Properties"]["Code"] = copy.deepcopy(CODE)
    # Conditions may name a region on purpose (template.yaml's ReceivesIamEvents); the resources,
    # where the translator writes ARNs, must not.
    text = json.dumps({key: value for key, value in out.items() if key != "Conditions"})
    if PLACEHOLDER_BUCKET in text or os.environ["AWS_DEFAULT_REGION"] in text:
        raise RuntimeError("the translation left the placeholder code location or a region name behind")
    out.pop("Transform", None)
    out.get("Metadata", {}).pop("AWS::ServerlessRepo::Application", None)
    if not out.get("Metadata"):
        out.pop("Metadata", None)
    parameters = {
        "ArtifactBucketPrefix": {
            "Type": "String",
            "AllowedPattern": "^[a-z0-9][a-z0-9.-]{1,40}[a-z0-9]$",
            "Description": "Code is read from the bucket <ArtifactBucketPrefix>-<region> in every region "
            "the stack is deployed to (Lambda reads code only from a bucket in its own region).",
        },
        "ArtifactKey": {
            "Type": "String",
            "Default": artifact_key(ver),
            # The pinned versions' Description names the code location in at most 256 characters.
            "MaxLength": 160,
            "Description": "Key of the code zip in that bucket (the same in every region).",
        },
    }
    out["Parameters"] = {**parameters, **out.get("Parameters", {})}
    out["Description"] = f"{out.get('Description', '').strip()} (release {ver}, packaged for StackSets)"
    # SAM copies the function's checkov skips onto its EventInvokeConfig, where no check reads them.
    for resource in out["Resources"].values():
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig":
            resource.pop("Metadata", None)
    return out


# --- pinning the code --------------------------------------------------------------------------
#
# Lambda reads the code from `<ArtifactBucketPrefix>-<region>`; in a region where the publisher
# has no such bucket, whoever creates it would supply code that runs with rolekeeper's IAM rights.
# The release therefore names its zip's SHA-256, and the stack proves the function holds exactly
# that code before anything can run it with those rights:
#
# - An AWS::Lambda::Version per function with CodeSha256. Lambda's PublishVersion: "Only publish a
#   version if the hash value matches the value that's specified" (API reference, PublishVersion);
#   the CloudFormation resource: it "must match the SHA-256 hash of the $LATEST version of the
#   function" (docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-lambda-version.html).
#   Otherwise Lambda answers InvalidParameterValueException "CodeSHA256 (...) is different from
#   current CodeSHA256 in $LATEST", the stack fails and rolls back. CodeSha256 is the base64 of
#   the zip's SHA-256 digest. The version's Description names the code location, so changing
#   ArtifactBucketPrefix or ArtifactKey replaces the version and checks the new code again
#   (CodeSha256 and Description both "require replacement"; Description takes 256 characters).
# - Everything that lets the code act waits for that check (DependsOn the version): the functions'
#   own IAM policies (the roles start with AWS's logging policy only), the EventBridge rules and
#   their invoke permissions, the healer's EventInvokeConfig. A wrong zip is never invoked by the
#   stack and never holds rolekeeper's rights, not even while the failed stack rolls back.
#
# Why not point the ServiceToken and the rules at the version (or an alias on it): a version also
# freezes the function's configuration, and the environment here is the deployer's parameters
# (VerifyRequests, HealMode, the allow-lists). CloudFormation publishes a new version only when the
# Version resource is replaced, which a parameter change cannot trigger (a logical id cannot depend
# on a parameter; the Description holds at most 256 characters), so a parameter update would
# silently keep the old settings in force. Invocations go to the function itself; the version is
# the proof that its code is the release's. After the stack is deployed, only a principal allowed
# lambda:UpdateFunctionCode on the function can change that code, as for any Lambda function.
# Why not a code-signing configuration: it needs AWS Signer jobs per region at publish time (the
# package is made offline), trusts any zip the profile ever signed (an older release included),
# and cannot be checked from the sources; a hash can (the zip is reproducible).


def code_sha256(data: bytes) -> str:
    """Lambda's CodeSha256 of a zip: the base64 of its SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _references(value: Any, names: set[str]) -> bool:
    """Whether a template fragment refers to any of these logical ids (Ref, GetAtt, Sub)."""
    if isinstance(value, dict):
        if value.get("Ref") in names:
            return True
        get_att = value.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] in names:
            return True
        sub = value.get("Fn::Sub")
        text = sub if isinstance(sub, str) else sub[0] if isinstance(sub, list) and sub else None
        if isinstance(text, str) and any(f"${{{n}}}" in text or f"${{{n}." in text for n in names):
            return True
        return any(_references(v, names) for v in value.values())
    if isinstance(value, list):
        return any(_references(v, names) for v in value)
    return False


def _depend_on(resource: dict[str, Any], logical_id: str) -> None:
    depends = resource.get("DependsOn", [])
    depends = [depends] if isinstance(depends, str) else list(depends)
    if logical_id not in depends:
        depends.append(logical_id)
    resource["DependsOn"] = depends


def pin_code(template: dict[str, Any], sha256_b64: str, ver: str) -> None:
    """Each function runs only the code whose hash the release names (see above)."""
    resources: dict[str, Any] = template["Resources"]
    functions = [name for name, r in resources.items() if r["Type"] == "AWS::Lambda::Function"]
    for function in functions:
        version = f"{function}Version"
        role = resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
        resources[version] = {
            "Type": "AWS::Lambda::Version",
            "Properties": {
                "FunctionName": {"Ref": function},
                "CodeSha256": sha256_b64,
                "Description": {
                    "Fn::Sub": f"rolekeeper {ver}, code from ${{ArtifactBucketPrefix}}-${{AWS::Region}}/${{ArtifactKey}}"
                },
            },
        }
        # The role keeps AWS's managed policies (logging); its own policies wait for the check.
        role_properties = resources[role]["Properties"]
        arns = role_properties.get("ManagedPolicyArns", [])
        role_properties["ManagedPolicyArns"] = [arn for arn in arns if not isinstance(arn, dict)]
        for arn in arns:
            if isinstance(arn, dict):
                resources[arn["Ref"]]["Properties"].setdefault("Roles", []).append({"Ref": role})
        for inline in role_properties.pop("Policies", []):
            # SAM writes the on-failure destination's policy without a Version (IAM then reads it
            # as 2008-10-17, the language without policy variables; it uses none).
            document = {"Version": "2012-10-17", **inline["PolicyDocument"]}
            resources[inline["PolicyName"]] = {
                "Type": "AWS::IAM::RolePolicy",
                "Properties": {
                    "RoleName": {"Ref": role},
                    "PolicyName": inline["PolicyName"],
                    "PolicyDocument": document,
                },
            }
        rights = [n for n, r in resources.items() if n != function and _references(r, {role})]
        for name in rights:
            _depend_on(resources[name], version)
        # What invokes the function (rules, their permissions, the on-failure destination, which
        # Lambda checks the role may send to) waits for the check and for the rights. CloudFormation
        # refuses a DependsOn on a resource whose Condition may leave it out.
        ready = [version, *(n for n in rights if "Condition" not in resources[n])]
        for name, resource in resources.items():
            if name not in (version, *rights) and _references(resource, {function}):
                for dependency in ready:
                    _depend_on(resource, dependency)


# --- the code ----------------------------------------------------------------------------------


def build_zip(destination: Path) -> None:
    """As `sam build` for python3.13/arm64 without Docker: aarch64 wheels only, then the source."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch, "package")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
                "--platform",
                "manylinux2014_aarch64",
                "--implementation",
                "cp",
                "--python-version",
                "3.13",
                "--only-binary=:all:",
                "--target",
                str(target),
                "-r",
                str(ROOT / "src" / "requirements.txt"),
            ],
            check=True,
            timeout=600,
        )
        shutil.copytree(
            ROOT / "src" / "rolekeeper",
            target / "rolekeeper",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        files = sorted(
            p
            for p in target.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
        # Fixed timestamps and order: the same sources give the same zip.
        with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(target).as_posix(), ZIP_TIME)
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())


# --- publishing --------------------------------------------------------------------------------


def bucket_policy(prefix: str, region: str, org_id: str) -> dict[str, Any]:
    bucket = f"{prefix}-{region}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OrganizationReadsRolekeeperCode",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/rolekeeper/*",
                "Condition": {"StringEquals": {"aws:PrincipalOrgID": org_id}},
            },
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def template_key(ver: str) -> str:
    return f"rolekeeper/{ver}/rolekeeper-{ver}.template.json"


def publish_text(ver: str, template_name: str, template_size: int, zip_name: str, data: bytes) -> str:
    key, tkey = artifact_key(ver), template_key(ver)
    pinned = code_sha256(data)
    return f"""# Publishing rolekeeper {ver}

- `{template_name}`: CloudFormation without transform, minified JSON, {template_size:,} bytes.
- `{zip_name}`: python3.13, arm64, SHA-256 `{hashlib.sha256(data).hexdigest()}`.

The template runs only this zip: its `AWS::Lambda::Version` resources name CodeSha256
`{pinned}`, and a stack whose bucket holds any other zip fails and rolls back before
that code gets rolekeeper's IAM rights.

Stacks read the code from the bucket `<prefix>-<region>` of the region they run in, at key
`{key}`. Create that bucket in **every** region the StackSet will reach, in your own
account, **before** it reaches the region (a region added later: run the loop below for it first).
The template goes next to the zip, and StackSets reads it from there (`--template-url`).

Replace PREFIX, REGIONS and ORG_ID (`aws organizations describe-organization --query
Organization.Id --output text`), then, from the account that owns the buckets:

```bash
PREFIX=acme-rolekeeper
REGIONS="us-east-1 eu-west-1"
ORG_ID=o-exampleorgid
OWNER=$(aws sts get-caller-identity --query Account --output text)
for REGION in $REGIONS; do
  BUCKET=$PREFIX-$REGION
  # Yours already, or create it: fails (BucketAlreadyExists) if the name is someone else's.
  aws s3api head-bucket --bucket $BUCKET --expected-bucket-owner $OWNER 2>/dev/null ||
    aws s3api create-bucket --bucket $BUCKET --region $REGION \\
      $( [ $REGION = us-east-1 ] || echo --create-bucket-configuration LocationConstraint=$REGION )
  # --expected-bucket-owner: each call fails (403) unless the bucket belongs to this account.
  aws s3api put-public-access-block --bucket $BUCKET --region $REGION --expected-bucket-owner $OWNER \\
    --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
  sed -e "s/BUCKET_NAME/$BUCKET/g" -e "s/ORGANIZATION_ID/$ORG_ID/g" dist/bucket-policy.json > /tmp/policy-$REGION.json
  aws s3api put-bucket-policy --bucket $BUCKET --region $REGION --expected-bucket-owner $OWNER \\
    --policy file:///tmp/policy-$REGION.json
  # S3 refuses the upload unless its SHA-256 is the one the template pins.
  aws s3api put-object --bucket $BUCKET --region $REGION --expected-bucket-owner $OWNER \\
    --key {key} --body dist/{zip_name} --checksum-sha256 {pinned}
done
HOME_REGION=${{REGIONS%% *}}
aws s3api put-object --bucket $PREFIX-$HOME_REGION --region $HOME_REGION --expected-bucket-owner $OWNER \\
  --key {tkey} --body dist/{template_name}
```

`dist/bucket-policy.json` lets every principal of the organization (the StackSets execution role
in each member account, which Lambda's CreateFunction reads the code as, and the account that
creates the StackSet, which reads the template) `s3:GetObject` under `rolekeeper/`, and nothing
else; BlockPublicPolicy accepts it because aws:PrincipalOrgID limits it.

Then, from the management account (or a delegated administrator, adding `--call-as
DELEGATED_ADMIN`), with trusted access for StackSets turned on once (`aws cloudformation
activate-organizations-access`):

```bash
aws cloudformation create-stack-set --stack-set-name rolekeeper \\
  --template-url https://$PREFIX-$HOME_REGION.s3.$HOME_REGION.amazonaws.com/{tkey} \\
  --permission-model SERVICE_MANAGED \\
  --auto-deployment Enabled=true,RetainStacksOnAccountRemoval=false \\
  --capabilities CAPABILITY_IAM \\
  --parameters ParameterKey=ArtifactBucketPrefix,ParameterValue=$PREFIX \\
               ParameterKey=ServiceTokenExportName,ParameterValue=rolekeeper-ServiceToken
aws cloudformation create-stack-instances --stack-set-name rolekeeper \\
  --deployment-targets OrganizationalUnitIds=ou-abcd-11112222 \\
  --regions $REGIONS \\
  --operation-preferences MaxConcurrentPercentage=25,FailureTolerancePercentage=10
```

To move an existing stack set to this release: `aws cloudformation update-stack-set
--stack-set-name rolekeeper --template-url <the URL above>` with the same `--parameters` and
`--capabilities`; leave ArtifactKey unset, its default is this release's key.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--code-zip", type=Path, help="pin (and ship) this zip instead of building one")
    parser.add_argument(
        "--template-only",
        action="store_true",
        help="write only the template, pinned to --code-zip or else to no code at all",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    ver = version()
    args.out.mkdir(parents=True, exist_ok=True)
    template_name = f"rolekeeper-{ver}.template.json"
    zip_name = f"rolekeeper-{ver}-arm64.zip"
    if args.template_only:
        data = args.code_zip.read_bytes() if args.code_zip else b""
    else:
        if args.code_zip is None:
            build_zip(args.out / zip_name)
        elif args.code_zip.resolve() != (args.out / zip_name).resolve():
            shutil.copyfile(args.code_zip, args.out / zip_name)
        data = (args.out / zip_name).read_bytes()
        print(
            f"wrote {args.out / zip_name} ({len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()})"
        )
    packaged = translate(load_sam_template(args.template), ver)
    pin_code(packaged, code_sha256(data), ver)
    text = json.dumps(packaged, separators=(",", ":"))
    (args.out / template_name).write_text(text)
    size = len(text.encode())
    pinned = f"CodeSha256 {code_sha256(data)}" if data else "pinned to no code (--template-only)"
    print(
        f"wrote {args.out / template_name} ({len(packaged['Resources'])} resources, {size:,} bytes, {pinned})"
    )
    if args.template_only:
        return 0
    policy = bucket_policy("PREFIX", "REGION", "ORGANIZATION_ID")
    policy_text = json.dumps(policy, indent=2).replace("PREFIX-REGION", "BUCKET_NAME")
    (args.out / "bucket-policy.json").write_text(policy_text + "\n")
    (args.out / "PUBLISH.md").write_text(publish_text(ver, template_name, size, zip_name, data))
    print(f"wrote {args.out / 'bucket-policy.json'} and {args.out / 'PUBLISH.md'}\n")
    print((args.out / "PUBLISH.md").read_text())
    print(f"(package took {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
