"""What the scheduled reconcile keeps of a GetAccountAuthorizationDetails page (no AWS)."""

from __future__ import annotations

from typing import Any

from rolekeeper.domain.drift import Actual, drift
from rolekeeper.healing.snapshot import Snapshot

ACCOUNT = "123456789012"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
BIG = "x" * 10_000


def detail(name: str, **extra: Any) -> dict[str, Any]:
    """A RoleDetailList entry as IAM returns it (boto3 decodes the policy documents)."""
    arn = f"arn:aws:iam::{ACCOUNT}:role/{name}"
    return {
        "Path": "/",
        "RoleName": name,
        "RoleId": f"AROA{name.upper():0<17}"[:21],
        "Arn": arn,
        "CreateDate": "2026-12-01T00:00:00Z",
        "AssumeRolePolicyDocument": {
            "Version": "2012-10-17",
            "Statement": [dict(s) for s in TRUST["Statement"]],
        },
        "InstanceProfileList": [
            {
                "Path": "/",
                "InstanceProfileName": name,
                "InstanceProfileId": "AIPA" + "0" * 17,
                "Arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}",
                "CreateDate": "2026-12-01T00:00:00Z",
                "Roles": [{"RoleName": name, "Arn": arn, "AssumeRolePolicyDocument": {"Big": BIG}}],
            }
        ],
        "RolePolicyList": [{"PolicyName": "inline", "PolicyDocument": {"Big": BIG}}],
        "AttachedManagedPolicies": [{"PolicyName": "AmazonSSMManagedInstanceCore", "PolicyArn": SSM}],
        "Tags": [{"Key": "team", "Value": "a"}],
        "RoleLastUsed": {"LastUsedDate": "2026-12-01T00:00:00Z", "Region": "us-east-1"},
        **extra,
    }


def test_snapshot_keeps_what_the_checks_read_and_drops_the_rest():
    snapshot = Snapshot()
    snapshot.add([detail("app-a", PermissionsBoundary={"PermissionsBoundaryArn": SSM})])
    facts = snapshot.get("APP-A")  # IAM role names are unique case-insensitively
    assert facts is not None
    actual = facts.actual()
    assert actual.attached == {SSM} and actual.profiles == {"app-a"}
    role = actual.role
    assert role is not None
    assert role["AssumeRolePolicyDocument"] == TRUST
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == SSM
    assert role["Tags"] == [{"Key": "team", "Value": "a"}]
    assert BIG not in repr(facts)  # inline policies and the profiles' copies of the role are gone


def test_snapshot_keeps_one_copy_of_what_roles_share():
    snapshot = Snapshot()
    snapshot.add([detail("app-a"), detail("app-b")])
    a, b = snapshot.get("app-a"), snapshot.get("app-b")
    assert a is not None and b is not None
    assert a.trust is b.trust and a.tags is b.tags and a.attached is b.attached


def test_snapshot_role_is_a_fresh_copy_a_check_may_not_change_for_others():
    snapshot = Snapshot()
    snapshot.add([detail("app-a"), detail("app-b")])
    first = snapshot.get("app-a")
    assert first is not None
    first.role()["AssumeRolePolicyDocument"]["Statement"].clear()
    second = snapshot.get("app-b")
    assert second is not None and second.role()["AssumeRolePolicyDocument"] == TRUST


def test_snapshot_counts_a_profile_only_if_it_holds_the_role():
    other = detail("app-a")
    other["InstanceProfileList"][0]["Roles"] = [{"RoleName": "someone-else"}]
    snapshot = Snapshot()
    snapshot.add([other])
    facts = snapshot.get("app-a")
    assert facts is not None and facts.profiles == frozenset()


def test_snapshot_facts_give_drift_the_same_answer_as_the_whole_detail():
    from rolekeeper.domain.records import Claim, Kind, Record

    wants = {
        "name": "app-a",
        "blueprint": "ec2-application",
        "path": "/",
        "trust_statement": TRUST["Statement"][0],
        "principals": ["ec2.amazonaws.com"],
        "policy_arns": [SSM],
        "owned_policy_arns": [SSM],
        "instance_profile": True,
        "tags": {"team": "b"},
    }
    record = Record(
        key="ROLE#app-a",
        kind=Kind.ROLE,
        created=True,
        attrs={"name": "app-a", "role_id": detail("app-a")["RoleId"]},
        claims=[Claim("arn:aws:cloudformation:us-east-1:123456789012:stack/s/1", "R", True, "Delete", wants)],
    )
    whole = detail("app-a", Tags=[{"Key": "rolekeeper:managed", "Value": "true"}])
    snapshot = Snapshot()
    snapshot.add([whole])
    facts = snapshot.get("app-a")
    assert facts is not None
    from_whole = Actual(
        role=whole,
        attached={p["PolicyArn"] for p in whole["AttachedManagedPolicies"]},
        profiles={p["InstanceProfileName"] for p in whole["InstanceProfileList"]},
    )
    assert drift(record, facts.actual()) == drift(record, from_whole)
    assert drift(record, facts.actual())  # the tag team=b is wanted and gone
