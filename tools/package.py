"""make package: the StackSets-ready release artifact, made offline (no AWS call).

- dist/rolekeeper-<version>.template.json: template.yaml with the SAM transform applied by
  aws-sam-translator (the library `sam` itself uses), so no `Transform` is left and StackSets'
  execution role can deploy it. Both functions' code comes from S3 through two parameters,
  ArtifactBucketPrefix and ArtifactKey, read from `<prefix>-<region>` so one template serves
  every region.
- dist/rolekeeper-<version>-arm64.zip: the code for python3.13 on arm64, as `sam build` makes it
  for a pure pip build (manylinux2014_aarch64 wheels, src/requirements.txt, then src/rolekeeper).
- dist/bucket-policy.json and dist/PUBLISH.md: the bucket policy (read-only, to the organization
  through aws:PrincipalOrgID) and the exact `aws` commands that publish both.

Runs in its own venv (.venv-tools/translator: aws-sam-translator pins pydantic, which the project's
dev venv must not take from it). `--template-only` skips the zip (the tests use it).
"""

from __future__ import annotations

import argparse
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
    text = json.dumps(out)
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
            "Description": "Key of the code zip in that bucket (the same in every region).",
        },
    }
    out["Parameters"] = {**parameters, **out.get("Parameters", {})}
    out["Description"] = f"{out.get('Description', '').strip()} (release {ver}, packaged for StackSets)"
    return out


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


def publish_text(ver: str, template_name: str, zip_name: str, digest: str) -> str:
    key = artifact_key(ver)
    return f"""# Publishing rolekeeper {ver}

Files: `{template_name}` (CloudFormation, no transform) and `{zip_name}`
(python3.13, arm64; sha256 {digest}).

The stacks read the code from the bucket `<ArtifactBucketPrefix>-<region>` in each region they run
in, at key `{key}`. Replace PREFIX, the regions and the organization id (`aws organizations
describe-organization --query Organization.Id`), then, from the account that owns the buckets:

```bash
PREFIX=acme-rolekeeper
ORG_ID=o-exampleorgid
for REGION in us-east-1 eu-west-1; do
  BUCKET=$PREFIX-$REGION
  aws s3api create-bucket --bucket $BUCKET --region $REGION \\
    $( [ $REGION = us-east-1 ] || echo --create-bucket-configuration LocationConstraint=$REGION )
  aws s3api put-public-access-block --bucket $BUCKET --public-access-block-configuration \\
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
  sed -e "s/BUCKET_NAME/$BUCKET/g" -e "s/ORGANIZATION_ID/$ORG_ID/g" dist/bucket-policy.json > /tmp/policy-$REGION.json
  aws s3api put-bucket-policy --bucket $BUCKET --policy file:///tmp/policy-$REGION.json
  aws s3 cp dist/{zip_name} s3://$BUCKET/{key} --region $REGION
done
```

`dist/bucket-policy.json` lets every principal of the organization (the StackSets execution role
in each member account, which Lambda's CreateFunction reads the code as) `s3:GetObject` under
`rolekeeper/`, and nothing else; BlockPublicPolicy accepts it because aws:PrincipalOrgID limits it.

Then deploy `dist/{template_name}` with StackSets (README, "Deploy across an organization"),
with `ParameterKey=ArtifactBucketPrefix,ParameterValue=$PREFIX`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--template-only", action="store_true", help="skip building the code zip")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    ver = version()
    args.out.mkdir(parents=True, exist_ok=True)
    template_name = f"rolekeeper-{ver}.template.json"
    packaged = translate(load_sam_template(args.template), ver)
    (args.out / template_name).write_text(json.dumps(packaged, indent=2, sort_keys=False) + "\n")
    print(f"wrote {args.out / template_name} ({len(packaged['Resources'])} resources, no Transform)")
    if args.template_only:
        return 0
    zip_name = f"rolekeeper-{ver}-arm64.zip"
    build_zip(args.out / zip_name)
    digest = hashlib.sha256((args.out / zip_name).read_bytes()).hexdigest()
    size_mb = (args.out / zip_name).stat().st_size / 1e6
    print(f"wrote {args.out / zip_name} ({size_mb:.1f} MB, sha256 {digest})")
    policy = bucket_policy("PREFIX", "REGION", "ORGANIZATION_ID")
    text = json.dumps(policy, indent=2).replace("PREFIX-REGION", "BUCKET_NAME")
    (args.out / "bucket-policy.json").write_text(text + "\n")
    (args.out / "PUBLISH.md").write_text(publish_text(ver, template_name, zip_name, digest))
    print(f"wrote {args.out / 'bucket-policy.json'} and {args.out / 'PUBLISH.md'}\n")
    print((args.out / "PUBLISH.md").read_text())
    print(f"(package took {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
