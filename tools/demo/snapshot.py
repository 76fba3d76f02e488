"""What IAM, KMS and rolekeeper's registry hold, as comparable facts, and the difference between
two snapshots in words."""

from __future__ import annotations

from typing import Any

# A snapshot: (category, name) -> the fields that describe it. Categories in display order, with
# the words for an object that appeared and one that went away.
Snapshot = dict[tuple[str, str], dict[str, str]]
CATEGORIES = {
    "role": ("role", "created", "deleted"),
    "policy": ("managed policy", "attached", "detached"),
    "profile": ("instance profile", "created", "deleted"),
    "grant": ("KMS grant", "issued", "revoked"),
    "record": ("registry record", "recorded", "removed"),
    "claim": ("registry claim", "recorded", "released"),
}


def short(grant_id: str) -> str:
    return grant_id[:16] + "..."


def _operations(operations: list[str]) -> str:
    from rolekeeper.domain.catalog import DEFAULT_GRANT_OPERATIONS

    if set(operations) == set(DEFAULT_GRANT_OPERATIONS):
        return f"the {len(operations)} default operations"
    return ", ".join(sorted(operations))


def snapshot(key_arns: tuple[str, ...] = ()) -> Snapshot:
    """What IAM, KMS (the grants on key_arns) and the registry hold now, as comparable facts."""
    import boto3

    facts: Snapshot = {}
    iam = boto3.client("iam")
    for page in iam.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            name = role["RoleName"]
            facts["role", name] = {"RoleId": role["RoleId"], "path": role["Path"]}
            for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                facts["policy", f"{policy['PolicyName']} on {name}"] = {}
    for profile in iam.list_instance_profiles()["InstanceProfiles"]:
        facts["profile", profile["InstanceProfileName"]] = {
            "holds": ", ".join(r["RoleName"] for r in profile["Roles"]) or "no role"
        }
    kms = boto3.client("kms")
    for key_arn in key_arns:
        for grant in kms.list_grants(KeyId=key_arn)["Grants"]:
            facts["grant", short(grant["GrantId"])] = {
                "to": grant["GranteePrincipal"].rsplit("/", 1)[-1],
                "for": _operations(grant["Operations"]),
            }
    _registry_facts(facts)
    return facts


def _registry_facts(facts: Snapshot) -> None:
    from rolekeeper.aws.registry import Registry
    from rolekeeper.config import settings

    for record in Registry(settings().registry_table_name).objects.all():
        name, fields = _record_fields(record)
        facts["record", name] = fields
        target = name.removeprefix("of ")
        for claim in record.claims:
            stack = claim.stack_id.split("/")[1]
            facts["claim", f"on {target} by stack {stack} / logical id {claim.logical_id}"] = {
                "OnDelete": claim.on_delete,
                "healing": "on" if claim.heal else "off",
            }


def _record_fields(record: Any) -> tuple[str, dict[str, str]]:
    if record.kind == "grant":
        name = f"of the grant CloudFormation knows as {short(record.key.rsplit('#', 1)[-1])}"
        fields = {"live grant": short(record.attrs.get("grant_id", "?"))}
        fields["for RoleId"] = record.attrs.get("grantee_role_id", "?")
    else:
        name = f"of {record.attrs.get('name') or record.key.split('#', 1)[-1]}"
        fields = {"made by": "rolekeeper" if record.created else "someone else (adopted)"}
        fields["RoleId"] = record.attrs.get("role_id", "?")
    if record.state:
        fields["state"] = record.state
    return name, fields


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """Each difference in words: what appeared, what went away, and what changed from -> to."""
    order = list(CATEGORIES)
    lines = []
    for category, name in sorted(before.keys() | after.keys(), key=lambda k: (order.index(k[0]), k[1])):
        label, appeared, went = CATEGORIES[category]
        old, new = before.get((category, name)), after.get((category, name))
        if old is None and new is not None:
            fields = ", ".join(f"{k} {v}" for k, v in new.items())
            lines.append(f"+ {label} {name} {appeared}" + (f" ({fields})" if fields else ""))
        elif new is None and old is not None:
            lines.append(f"- {label} {name} {went}")
        elif old != new and old is not None and new is not None:
            moved = [
                f"{k} {old.get(k, '-')} -> {new.get(k, '-')}"
                for k in {**old, **new}
                if old.get(k) != new.get(k)
            ]
            lines.append(f"~ {label} {name}: {'; '.join(moved)}")
    return lines
