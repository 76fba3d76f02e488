"""What a response and AWS must look like after each step, derived from the event and the plan."""

from __future__ import annotations

import copy
from typing import Any

from tools.devkit.fidelity import AWS_SERVICE_LINKED_ROLE_NAMES  # IAM's names, from the AWS documentation
from tools.sam_local.aws_state import Aws, grantee_arn
from tools.sam_local.plan import PLAN


class Expect:
    """Collects what differs from what a check wants."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, what: str, got: Any, want: Any) -> None:
        if got != want:
            self.problems.append(f"{what}: got {got!r}, want {want!r}")


def check_request(
    plan: dict[str, Any], event: dict[str, Any], response: dict[str, Any], aws: Aws, facts: dict[str, str]
) -> list[str]:
    """The response and the AWS state after a CloudFormation request, derived from the event."""
    expect = Expect()
    kind = event["ResourceType"]
    if event["RequestType"] == "Delete":
        _check_delete(expect, event, response, aws)
    elif kind == "Custom::ServiceLinkedRole":
        _check_service_linked_role(expect, event, response, aws, facts)
    elif kind == "Custom::ServiceRole":
        _check_service_role(expect, plan, event, response, aws, facts)
    elif kind == "Custom::SpotFleetKmsGrant":
        _check_grant(expect, plan, event, response, aws, facts)
    else:
        expect.problems.append(f"no checks for {kind}")
    if event["RequestType"] == "Update" and kind != "Custom::SpotFleetKmsGrant":
        expect(
            "PhysicalResourceId (in-place Update)",
            response.get("PhysicalResourceId"),
            event["PhysicalResourceId"],
        )
    return expect.problems


def _check_delete(expect: Expect, event: dict[str, Any], response: dict[str, Any], aws: Aws) -> None:
    props = event["ResourceProperties"]
    expect("PhysicalResourceId", response.get("PhysicalResourceId"), event["PhysicalResourceId"])
    if event["ResourceType"] == "Custom::SpotFleetKmsGrant":
        gone = event["PhysicalResourceId"].split("#")[-1]
        held = {g["GrantId"] for g in aws.grants(props["KeyId"])}
        expect("deleted grant still on the key", gone in held, False)
        return
    name = event["PhysicalResourceId"].rsplit("/", 1)[-1]
    on_delete = props.get("OnDelete", "Retain")
    expect(
        f"role {name} exists after Delete (OnDelete {on_delete})",
        aws.role(name) is not None,
        on_delete != "Delete",
    )


def _checked_role(
    expect: Expect, response: dict[str, Any], aws: Aws, name: str, arn: str
) -> dict[str, Any] | None:
    """The role, its attributes in the response checked; None (a problem noted) when it is missing."""
    role = aws.role(name)
    if role is None:
        expect.problems.append(f"role {name} missing")
        return None
    data = response.get("Data") or {}
    expect("PhysicalResourceId", response.get("PhysicalResourceId"), arn)
    expect("Data.RoleName", data.get("RoleName"), role["RoleName"])
    expect("Data.Arn", data.get("Arn"), arn)
    expect("Data.RoleId", data.get("RoleId"), role["RoleId"])
    return role


def _check_service_linked_role(
    expect: Expect, event: dict[str, Any], response: dict[str, Any], aws: Aws, facts: dict[str, str]
) -> None:
    props = event["ResourceProperties"]
    service = props["AWSServiceName"]
    suffix = f"_{props['CustomSuffix']}" if props.get("CustomSuffix") else ""
    name = AWS_SERVICE_LINKED_ROLE_NAMES[service] + suffix
    arn = f"arn:aws:iam::{facts['account']}:role/aws-service-role/{service}/{name}"
    role = _checked_role(expect, response, aws, name, arn)
    if role is None:
        return
    if "Description" in props:
        expect("role Description", role.get("Description"), props["Description"])


def _check_service_role(
    expect: Expect,
    plan: dict[str, Any],
    event: dict[str, Any],
    response: dict[str, Any],
    aws: Aws,
    facts: dict[str, str],
) -> None:
    props = event["ResourceProperties"]
    blueprint = plan["blueprints"][props["Blueprint"]]
    name = props.get("RoleName") or blueprint["role_name"]
    arn = f"arn:aws:iam::{facts['account']}:role{props.get('Path', '/')}{name}"
    if _checked_role(expect, response, aws, name, arn) is None:
        return
    want_policies = set(blueprint["policies"]) | set(props.get("ManagedPolicyArns", []))
    expect("attached policies", aws.attached(name), want_policies)
    tags = aws.tags(name)
    for tag in props.get("Tags", []):
        expect(f"tag {tag['Key']}", tags.get(tag["Key"]), tag["Value"])
    if str(props.get("InstanceProfile", blueprint["instance_profile"])).lower() == "true":
        expect("Data.InstanceProfileName", (response.get("Data") or {}).get("InstanceProfileName"), name)
        expect("instance profiles holding the role", aws.profiles_of(name), [name])


def _check_grant(
    expect: Expect,
    plan: dict[str, Any],
    event: dict[str, Any],
    response: dict[str, Any],
    aws: Aws,
    facts: dict[str, str],
) -> None:
    props = event["ResourceProperties"]
    data = response.get("Data") or {}
    key_arn = props["KeyId"]
    grant_id = data.get("GrantId", "")
    physical = response.get("PhysicalResourceId")
    expect("PhysicalResourceId", physical, f"{key_arn}#{grant_id}")
    expect("Data.KeyArn", data.get("KeyArn"), key_arn)
    expect("Data.GranteePrincipal", data.get("GranteePrincipal"), grantee_arn())
    on_key = {g["GrantId"]: g for g in aws.grants(key_arn)}
    if grant_id not in on_key:
        expect.problems.append(f"grant {grant_id} not on {key_arn}")
        return
    expect("grantee", on_key[grant_id]["GranteePrincipal"], grantee_arn())
    want_ops = props.get("Operations") or plan["grants"]["default_operations"]
    expect("grant operations", sorted(on_key[grant_id]["Operations"]), sorted(want_ops))
    if event["RequestType"] == "Update":
        if physical == event["PhysicalResourceId"]:
            expect.problems.append("a changed grant must get a new PhysicalResourceId")
        facts["replaced_grant_id"] = event["PhysicalResourceId"].split("#")[-1]
    facts["grant_id"] = grant_id


def check_heal(
    step: dict[str, Any],
    result: dict[str, Any],
    before: dict[str, Any],
    damaged: dict[str, Any],
    after: dict[str, Any],
) -> list[str]:
    problems = []
    if result.get("outcome") != step["outcome"]:
        problems.append(
            f"outcome: got {result.get('outcome')!r} ({result.get('detail')}), want {step['outcome']!r}"
        )
    if step["outcome"] == "reconciled" and not result.get("healed"):
        problems.append(f"reconcile healed nothing: {result}")
    state = step.get("state", "restored")
    if state == "unchanged":
        want = damaged
    elif state == "restored":
        want = before
    elif state == "restored_keeping_additions":
        # The healer adds back what the blueprint needs and removes nothing: the trust policy is
        # what it was plus the statements the damage put in.
        want = copy.deepcopy(before)
        for name, role in want["roles"].items():
            added = [t for t in damaged["roles"].get(name, {}).get("trust", []) if t not in role["trust"]]
            role["trust"] = sorted(role["trust"] + added)
    else:
        return [*problems, f"unknown state {state!r} in {PLAN.name}"]
    if after != want:
        problems.append(f"AWS state not {state}: {diff(want, after)}")
    return problems


def diff(want: dict[str, Any], got: dict[str, Any]) -> str:
    parts = []
    for section, wanted in want.items():
        if isinstance(wanted, dict):
            for name in sorted(set(wanted) | set(got[section])):
                if wanted.get(name) != got[section].get(name):
                    parts.append(f"{section}.{name}: {got[section].get(name)!r} != {wanted.get(name)!r}")
        elif wanted != got[section]:
            parts.append(f"{section}: {got[section]!r} != {wanted!r}")
    return "; ".join(parts)[:1500]
