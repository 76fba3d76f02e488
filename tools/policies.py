"""Every IAM policy rolekeeper ships or creates, as JSON documents for parliament (make lint).

- the policies in template.yaml (ConvergePolicy, each function's inline policies), with
  intrinsic functions resolved to sample values (partition aws, account 123456789012);
- the forwarder's policies in examples/;
- every trust policy the blueprints create (with and without confused-deputy protection).

Prints {"name": document, ...} as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = {
    "AWS::Partition": "aws",
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "rolekeeper",
    "AWS::URLSuffix": "amazonaws.com",
    "ApplicationRoleNamePrefix": "app-",
    "AllowedManagedPolicyArns": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    "AllowedPermissionsBoundaryArns": "arn:aws:iam::123456789012:policy/app-boundary",
    "NotificationEmail": "ops@example.com",
    "NotificationTopic": "arn:aws:sns:us-east-1:123456789012:rolekeeper-NotificationTopic",
    "TargetRegion": "eu-west-1",
    "RolekeeperStackName": "rolekeeper",
    "OrgEventBusArn": "arn:aws:events:us-east-1:210987654321:event-bus/rolekeeper-org",
}


class Tagged:
    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


def construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """The value under a CloudFormation short-form tag (!Ref, !Sub, ...), whatever its node kind."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


def _construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    return Tagged(suffix, construct_node(loader, node))


class Loader(yaml.SafeLoader):
    pass


Loader.add_multi_constructor("!", _construct)


class Resolver:
    """Intrinsic functions resolved with the SAMPLE values (every optional feature on), or the
    given parameter values; a Fn::If follows its condition as CloudFormation would."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
        self.parameters = template.get("Parameters", {})
        self.resources = template.get("Resources", {})
        self.conditions = template.get("Conditions", {})
        self.given = {**SAMPLE, **(parameters or {})}

    def ref(self, name: str) -> Any:
        if name in self.given:
            return self.given[name]
        if name in self.parameters:
            default = self.parameters[name].get("Default", "")
            kind = self.parameters[name].get("Type", "String")
            return default.split(",") if kind == "CommaDelimitedList" else default
        if name == "AWS::NoValue":
            return None
        return f"arn:aws:resource:us-east-1:123456789012:{name}"

    def __call__(self, node: Any) -> Any:
        if isinstance(node, Tagged):
            return self.intrinsic(node.tag, node.value)
        if isinstance(node, dict):
            if len(node) == 1 and next(iter(node)).startswith(("Fn::", "Ref")):
                key = next(iter(node))
                return self.intrinsic(key.removeprefix("Fn::"), node[key])
            return {k: v for k, v in ((k, self(v)) for k, v in node.items()) if v is not None}
        if isinstance(node, list):
            return [v for v in (self(v) for v in node) if v is not None]
        return node

    def intrinsic(self, tag: str, value: Any) -> Any:
        if tag == "Ref":
            return self.ref(value)
        if tag == "GetAtt":
            resource = value.split(".")[0] if isinstance(value, str) else value[0]
            if resource == "RegistryTable":
                return "arn:aws:dynamodb:us-east-1:123456789012:table/rolekeeper-RegistryTable-ABC"
            return f"arn:aws:resource:us-east-1:123456789012:{resource}"
        if tag == "Sub":
            text, variables = (value, {}) if isinstance(value, str) else (value[0], self(value[1]))
            for name in [*variables, *SAMPLE, *self.parameters]:
                resolved = variables.get(name, None) if name in variables else self.ref(name)
                if isinstance(resolved, list):
                    resolved = ",".join(resolved)
                text = text.replace("${" + name + "}", str(resolved))
            return text.replace("${RegistryTable.Arn}", self.intrinsic("GetAtt", "RegistryTable.Arn"))
        if tag == "If":
            return self(value[1] if self.holds(self.conditions[value[0]]) else value[2])
        if tag in ("Not", "Equals", "Condition", "And", "Or"):
            return {f"Fn::{tag}": value}
        if tag == "Join":
            return value[0].join(str(v) for v in self(value[1]))
        if tag == "Split":
            return str(self(value[1])).split(value[0])
        raise ValueError(f"unsupported intrinsic {tag}")

    def holds(self, condition: Any) -> bool:
        """A condition of the Conditions section (Equals, Not, And, Or, Condition)."""
        tag, value = (
            (condition.tag, condition.value)
            if isinstance(condition, Tagged)
            else next((k.removeprefix("Fn::"), v) for k, v in condition.items())
        )
        if tag == "Equals":
            left, right = (self(v) for v in value)
            flat = [",".join(v) if isinstance(v, list) else v for v in (left, right)]
            return bool(flat[0] == flat[1])
        if tag == "Not":
            return not self.holds(value[0])
        if tag == "And":
            return all(self.holds(v) for v in value)
        if tag == "Or":
            return any(self.holds(v) for v in value)
        if tag == "Condition":
            return self.holds(self.conditions[value])
        raise ValueError(f"unsupported condition {tag}")


def template_policies(path: Path, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    template = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    resolve = Resolver(template, parameters)
    found: dict[str, Any] = {}
    for name, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            found[f"{path.name}:{name}"] = resolve(properties["PolicyDocument"])
        for i, policy in enumerate(properties.get("Policies", [])):
            if isinstance(policy, dict) and "Statement" in policy:
                found[f"{path.name}:{name}:Policies[{i}]"] = resolve(policy)
            elif isinstance(policy, dict) and "PolicyDocument" in policy:
                found[f"{path.name}:{name}:{policy.get('PolicyName', i)}"] = resolve(policy["PolicyDocument"])
    return found


def blueprint_policies() -> dict[str, Any]:
    from rolekeeper.domain.catalog import BLUEPRINTS, Scope

    scope = Scope("aws", "us-east-1", "123456789012")
    found = {}
    for blueprint in BLUEPRINTS.values():
        for protection in (True, False):
            statement = blueprint.trust_statement(scope, protection)
            found[f"trust:{blueprint.name}:protection={protection}"] = {
                "Version": "2012-10-17",
                "Statement": [statement],
            }
    return found


def main() -> int:
    documents = {
        **template_policies(ROOT / "template.yaml"),
        **template_policies(ROOT / "examples" / "iam-events-forwarder.yaml"),
        **template_policies(ROOT / "examples" / "batch-platform.yaml"),
        **blueprint_policies(),
    }
    json.dump(documents, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
