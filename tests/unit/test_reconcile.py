"""Pure parts of reconcile and catalog: trust policy merging, canonical form, grant names."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest

from rolekeeper.domain.catalog import BLUEPRINTS, LINKED_SERVICES, Blueprint, LinkedService, Scope
from rolekeeper.domain.specs import GrantSpec, LinkedRoleSpec, RoleSpec
from rolekeeper.domain.trust import canonical, merged_trust, trusts

EC2 = "ec2.amazonaws.com"
ACCOUNT = "123456789012"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROLE_ID = "AROAEXAMPLEEXAMPLE12"
GRANT_NAME = re.compile(r"^[a-zA-Z0-9:/_-]+$")


def allow(service: Any, action: Any = "sts:AssumeRole", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"Service": service}, "Action": action, **extra}


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# --- trusts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        doc(allow(EC2)),
        doc(allow([EC2, "ssm.amazonaws.com"])),
        doc(allow(EC2, ["sts:TagSession", "sts:AssumeRole"])),
        doc(allow(EC2, "sts:*")),
        doc(allow(EC2, "*")),
        {"Statement": allow(EC2)},  # a single statement need not be a list
        doc(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            },
            allow(EC2),
        ),
    ],
)
def test_trusts_when_an_allow_statement_lets_the_principal_assume_the_role(document):
    assert trusts(document, (EC2,))


@pytest.mark.parametrize(
    "document",
    [
        {},
        doc(),
        doc({**allow(EC2), "Effect": "Deny"}),
        doc(allow(EC2, "sts:TagSession")),
        doc(allow(EC2, "sts:AssumeRoleWithWebIdentity")),
        doc(allow("lambda.amazonaws.com")),
        doc({"Effect": "Allow", "Principal": {"AWS": EC2}, "Action": "sts:AssumeRole"}),
        doc({"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"}),
    ],
)
def test_does_not_trust_otherwise(document):
    assert not trusts(document, (EC2,))


def test_trusts_any_of_the_principals_given():
    assert trusts(doc(allow("ec2.amazonaws.com.cn")), ("ec2.amazonaws.com", "ec2.amazonaws.com.cn"))


# --- merged_trust -----------------------------------------------------------------------------

BLUEPRINT_STATEMENT = allow(EC2)


def test_merged_trust_of_nothing_is_the_blueprint_statement():
    assert merged_trust(None, BLUEPRINT_STATEMENT, (EC2,)) == doc(BLUEPRINT_STATEMENT)
    assert merged_trust({}, BLUEPRINT_STATEMENT, (EC2,)) == doc(BLUEPRINT_STATEMENT)


def test_merged_trust_keeps_statements_for_other_principals():
    other = allow("ssm.amazonaws.com")
    federated = {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole",
    }
    merged = merged_trust(doc(other, federated, allow(EC2)), BLUEPRINT_STATEMENT, (EC2,))
    assert merged == doc(other, federated, BLUEPRINT_STATEMENT)


def test_merged_trust_keeps_the_other_services_of_a_shared_statement():
    shared = allow([EC2, "ssm.amazonaws.com", "ecs-tasks.amazonaws.com"])
    merged = merged_trust(doc(shared), BLUEPRINT_STATEMENT, (EC2,))
    assert merged["Statement"] == [
        allow(["ssm.amazonaws.com", "ecs-tasks.amazonaws.com"]),
        BLUEPRINT_STATEMENT,
    ]


def test_merged_trust_unwraps_a_single_remaining_service():
    merged = merged_trust(doc(allow([EC2, "ssm.amazonaws.com"])), BLUEPRINT_STATEMENT, (EC2,))
    assert merged["Statement"][0]["Principal"] == {"Service": "ssm.amazonaws.com"}


def test_merged_trust_keeps_other_principal_kinds_in_the_same_statement():
    mixed = {
        "Effect": "Allow",
        "Principal": {"Service": EC2, "AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole",
    }
    merged = merged_trust(doc(mixed), BLUEPRINT_STATEMENT, (EC2,))
    assert merged["Statement"][0] == {**mixed, "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}
    assert merged["Statement"][-1] == BLUEPRINT_STATEMENT


def test_merged_trust_replaces_the_principal_s_statement_with_the_blueprint_s():
    wanted = Blueprint(
        "t", "spotfleet.amazonaws.com", (), None, instance_profile=False, confused_deputy=True
    ).trust_statement(Scope("aws", "us-east-1", ACCOUNT), confused_deputy_protection=True)
    merged = merged_trust(doc(allow("spotfleet.amazonaws.com")), wanted, ("spotfleet.amazonaws.com",))
    assert merged == doc(wanted)


def test_merged_trust_handles_every_principal_of_the_blueprint():
    principals = ("ec2.amazonaws.com", "ec2.amazonaws.com.cn")
    merged = merged_trust(doc(allow(list(principals))), BLUEPRINT_STATEMENT, principals)
    assert merged == doc(BLUEPRINT_STATEMENT)


def test_merged_trust_is_idempotent():
    current = doc(allow([EC2, "ssm.amazonaws.com"]), allow("lambda.amazonaws.com"))
    once = merged_trust(current, BLUEPRINT_STATEMENT, (EC2,))
    twice = merged_trust(once, BLUEPRINT_STATEMENT, (EC2,))
    assert canonical(twice) == canonical(once)


def test_merged_trust_of_a_role_already_right_is_unchanged():
    current = doc(allow("ssm.amazonaws.com"), BLUEPRINT_STATEMENT)
    assert canonical(merged_trust(current, BLUEPRINT_STATEMENT, (EC2,))) == canonical(current)


def test_merged_trust_does_not_modify_its_input():
    current = doc(allow([EC2, "ssm.amazonaws.com"]))
    before = json.dumps(current, sort_keys=True)
    merged_trust(current, BLUEPRINT_STATEMENT, (EC2,))
    assert json.dumps(current, sort_keys=True) == before


def test_merged_trust_keeps_a_deny_someone_added_for_the_principal():
    # DESIGN: adopting a role "never removes what others added". A Deny naming the blueprint's
    # principal is a restriction its owner chose; dropping it widens who can assume the role.
    deny = {
        "Effect": "Deny",
        "Principal": {"Service": EC2},
        "Action": "sts:AssumeRole",
        "Condition": {"StringNotEquals": {"aws:SourceAccount": ACCOUNT}},
    }
    merged = merged_trust(doc(allow(EC2), deny), BLUEPRINT_STATEMENT, (EC2,))
    assert deny in merged["Statement"]


def test_merged_trust_keeps_other_actions_someone_granted_the_principal():
    # DESIGN: "never removes what others added": sts:TagSession granted to the principal stays.
    current = doc(allow(EC2, ["sts:AssumeRole", "sts:TagSession"]))
    merged = merged_trust(current, BLUEPRINT_STATEMENT, (EC2,))
    granted = {
        action
        for statement in merged["Statement"]
        if statement["Effect"] == "Allow" and EC2 in json.dumps(statement.get("Principal"))
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    assert {"sts:AssumeRole", "sts:TagSession"} <= granted


# --- canonical --------------------------------------------------------------------------------


def test_canonical_treats_a_one_item_list_as_its_item():
    assert canonical(allow([EC2], ["sts:AssumeRole"])) == canonical(allow(EC2))


def test_canonical_ignores_list_and_key_order():
    a = {
        "Statement": [allow(["a.amazonaws.com", "b.amazonaws.com"]), allow("c.amazonaws.com")],
        "Version": "2012-10-17",
    }
    b = {
        "Version": "2012-10-17",
        "Statement": [allow("c.amazonaws.com"), allow(["b.amazonaws.com", "a.amazonaws.com"])],
    }
    assert canonical(a) == canonical(b)


def test_canonical_drops_empty_sids_only():
    assert canonical({**allow(EC2), "Sid": ""}) == canonical(allow(EC2))
    assert canonical({**allow(EC2), "Sid": "Ec2"}) != canonical(allow(EC2))


def test_canonical_keeps_real_differences():
    assert canonical(allow(EC2)) != canonical(allow(EC2, "sts:TagSession"))
    assert canonical(allow(EC2)) != canonical({**allow(EC2), "Effect": "Deny"})
    assert canonical(doc(allow(EC2))) != canonical(doc(allow(EC2), allow("ssm.amazonaws.com")))
    conditioned = allow(EC2, Condition={"StringEquals": {"aws:SourceAccount": ACCOUNT}})
    assert canonical(conditioned) != canonical(allow(EC2))


def test_canonical_leaves_scalars_alone():
    assert canonical("x") == "x"
    assert canonical(3) == 3
    assert canonical(None) is None
    assert canonical([]) == []


def test_canonical_is_idempotent():
    document = doc(
        allow([EC2, "ssm.amazonaws.com"], ["sts:TagSession", "sts:AssumeRole"]), allow("a.amazonaws.com")
    )
    assert canonical(canonical(document)) == canonical(document)


# --- GrantSpec.name ---------------------------------------------------------------------------


def stack_id(name: str) -> str:
    return f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/{name}/5b9a7f30-8a1b-11ef-a8b0-0a1b2c3d4e5f"


def grant(stack: str = "app", logical_id: str = "SpotFleetAmiKeyGrant", **overrides: Any) -> GrantSpec:
    fields: dict[str, Any] = {
        "key_arn": KEY_ARN,
        "grantee_role_name": "AWSServiceRoleForEC2SpotFleet",
        "operations": ("Decrypt", "Encrypt"),
        "constraints": None,
        "retiring_principal": None,
        "stack_id": stack_id(stack),
        "logical_id": logical_id,
        **overrides,
    }
    return GrantSpec(**fields)


def test_grant_name_is_deterministic():
    assert grant().name(ROLE_ID) == grant().name(ROLE_ID)
    assert grant().name(ROLE_ID) == GrantSpec.from_dict(json.loads(json.dumps(grant().to_dict()))).name(
        ROLE_ID
    )


def test_grant_name_names_stack_logical_id_and_grantee_role_id():
    name = grant().name(ROLE_ID)
    assert name.startswith("rolekeeper-app-SpotFleetAmiKeyGrant-")
    assert name.endswith(f"-{ROLE_ID}")


def test_grant_name_changes_with_stack_logical_id_and_role_id():
    names = {
        grant().name(ROLE_ID),
        grant(stack="other").name(ROLE_ID),
        grant(logical_id="OtherGrant").name(ROLE_ID),
        grant().name("AROAOTHEROTHEROTHER1"),
    }
    assert len(names) == 4


def test_grant_name_differs_for_long_ids_sharing_a_prefix():
    prefix = "G" * 120
    assert grant(logical_id=prefix + "A").name(ROLE_ID) != grant(logical_id=prefix + "B").name(ROLE_ID)
    long_stack = "s" + "t" * 120
    assert grant(stack=long_stack + "a").name(ROLE_ID) != grant(stack=long_stack + "b").name(ROLE_ID)


def test_grant_name_same_stack_name_different_stack_id_differs():
    # A stack deleted and recreated under the same name has a new stack id: a new grant.
    other = f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/app/99999999-8a1b-11ef-a8b0-0a1b2c3d4e5f"
    assert grant().name(ROLE_ID) != grant(stack_id=other).name(ROLE_ID)


LONGEST_STACK_NAME = ("a" + "-B9" * 43)[:128]
LONGEST_LOGICAL_ID = ("Lg" + string.ascii_letters + string.digits) * 5
LONGEST_LOGICAL_ID = LONGEST_LOGICAL_ID[:255]


@pytest.mark.parametrize(
    ("stack", "logical_id"),
    [
        ("app", "SpotFleetAmiKeyGrant"),
        (LONGEST_STACK_NAME, LONGEST_LOGICAL_ID),
        ("a", "B"),
    ],
)
@pytest.mark.parametrize("role_id", [ROLE_ID, "AROA" + "Z" * 17])
def test_grant_name_fits_kms_name_rules(stack, logical_id, role_id):
    # Role ids are "AROA" and 17 letters/digits (21 characters).
    assert len(LONGEST_STACK_NAME) == 128
    assert len(LONGEST_LOGICAL_ID) == 255
    name = grant(stack=stack, logical_id=logical_id).name(role_id)
    assert GRANT_NAME.match(name), name
    assert 1 <= len(name) <= 256, len(name)


@pytest.mark.parametrize("odd_stack_id", ["", "not-an-arn", "arn:aws:cloudformation:us-east-1:1:stack"])
def test_grant_name_of_an_odd_stack_id_still_fits(odd_stack_id):
    name = grant(stack_id=odd_stack_id).name(ROLE_ID)
    assert GRANT_NAME.match(name), name
    assert len(name) <= 256


# --- specs survive the registry's JSON ---------------------------------------------------------


def test_specs_round_trip_through_json():
    role = RoleSpec(
        blueprint="ec2-application",
        name="web-app",
        path="/",
        trust_statement=allow(EC2),
        principals=(EC2,),
        policy_arns=("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",),
        owned_policy_arns=("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",),
        boundary=None,
        tags={"team": "web"},
        instance_profile=True,
    )
    linked = LinkedRoleSpec("autoscaling.amazonaws.com", "fleet", "d")
    spec = grant(constraints={"EncryptionContextSubset": {"a": "b"}})
    assert RoleSpec.from_dict(json.loads(json.dumps(role.to_dict()))) == role
    assert LinkedRoleSpec.from_dict(json.loads(json.dumps(linked.to_dict()))) == linked
    assert GrantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_linked_role_spec_names_the_role_as_aws_does():
    assert LinkedRoleSpec("spotfleet.amazonaws.com").role_name == "AWSServiceRoleForEC2SpotFleet"
    assert (
        LinkedRoleSpec("autoscaling.amazonaws.com", "fleet").role_name == "AWSServiceRoleForAutoScaling_fleet"
    )


# --- catalog ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [None, ""])
def test_name_with_no_suffix_is_the_role_name(suffix):
    service = LinkedService("autoscaling.amazonaws.com", "AWSServiceRoleForAutoScaling", accepts_suffix=True)
    assert service.name_with(suffix) == "AWSServiceRoleForAutoScaling"


def test_name_with_suffix_joins_with_underscore():
    service = LINKED_SERVICES["autoscaling.amazonaws.com"]
    assert service.name_with("fleet") == "AWSServiceRoleForAutoScaling_fleet"
    assert service.path == "/aws-service-role/autoscaling.amazonaws.com/"


def test_known_service_linked_role_names():
    assert {s: LINKED_SERVICES[s].role_name for s in LINKED_SERVICES} == {
        "spot.amazonaws.com": "AWSServiceRoleForEC2Spot",
        "spotfleet.amazonaws.com": "AWSServiceRoleForEC2SpotFleet",
        "batch.amazonaws.com": "AWSServiceRoleForBatch",
        "ecs.amazonaws.com": "AWSServiceRoleForECS",
        "autoscaling.amazonaws.com": "AWSServiceRoleForAutoScaling",
    }


PARTITIONS = [("aws", "us-east-1"), ("aws-cn", "cn-north-1"), ("aws-us-gov", "us-gov-west-1")]


@pytest.mark.parametrize(("partition", "region"), PARTITIONS)
def test_spot_fleet_tagging_trust_is_limited_to_this_account_s_fleet_requests(partition, region):
    blueprint = BLUEPRINTS["spot-fleet-tagging"]
    scope = Scope(partition, region, ACCOUNT)
    statement = blueprint.trust_statement(scope, confused_deputy_protection=True)
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Principal"]["Service"] in blueprint.principals(partition)  # type: ignore[index]
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnLike": {"aws:SourceArn": f"arn:{partition}:ec2:*:{ACCOUNT}:spot-fleet-request/sfr-*"},
    }
    # The statement it writes is one trusts() accepts, so a second converge adopts it.
    assert trusts(doc(statement), tuple(blueprint.principals(partition)))


@pytest.mark.parametrize(("partition", "region"), PARTITIONS)
def test_spot_fleet_tagging_trust_without_protection_has_no_condition(partition, region):
    statement = BLUEPRINTS["spot-fleet-tagging"].trust_statement(Scope(partition, region, ACCOUNT), False)
    assert "Condition" not in statement


@pytest.mark.parametrize(("partition", "region"), PARTITIONS)
@pytest.mark.parametrize("name", ["ecs-instance", "batch-service", "ec2-application"])
def test_other_blueprints_trust_their_principal_without_condition(name, partition, region):
    blueprint = BLUEPRINTS[name]
    for protection in (True, False):
        statement = blueprint.trust_statement(Scope(partition, region, ACCOUNT), protection)
        assert statement == {
            "Effect": "Allow",
            "Principal": {"Service": blueprint.principal},
            "Action": "sts:AssumeRole",
        }


@pytest.mark.parametrize(("partition", "region"), PARTITIONS)
def test_policy_arns_use_the_partition(partition, region):
    scope = Scope(partition, region, ACCOUNT)
    arns = BLUEPRINTS["ecs-instance"].policy_arns(scope)
    assert arns == (f"arn:{partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",)
    assert scope.role_arn("r", "/p/") == f"arn:{partition}:iam::{ACCOUNT}:role/p/r"


def test_scope_from_a_stack_id():
    scope = Scope.from_arn(f"arn:aws-us-gov:cloudformation:us-gov-west-1:{ACCOUNT}:stack/app/x")
    assert scope == Scope("aws-us-gov", "us-gov-west-1", ACCOUNT)
    with pytest.raises(ValueError, match="not an ARN"):
        Scope.from_arn("stack/app")


# --- healing.drift: what the healer and the schedule call damage (issue 9) --------------------

BOUNDARY = "arn:aws:iam::123456789012:policy/app-boundary"
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def _app(*, boundary: str | None = BOUNDARY, tags: dict[str, str] | None = None, created: bool = True):
    from rolekeeper.domain.records import Claim, Record

    spec = RoleSpec(
        blueprint="ec2-application",
        name="app-web",
        path="/",
        trust_statement=allow("ec2.amazonaws.com"),
        principals=("ec2.amazonaws.com",),
        policy_arns=(SSM,),
        boundary=boundary,
        tags=tags if tags is not None else {"team": "web"},
    )
    attrs = {"name": "app-web", "role_id": "AROA1"} | ({"created_role_id": "AROA1"} if created else {})
    return Record(
        key="ROLE#app-web",
        kind="role",
        created=created,
        attrs=attrs,
        claims=[Claim("stack", "Role", wants=spec.to_dict())],
    )


def _actual(*, boundary: str | None = BOUNDARY, tags: dict[str, str] | None = None, attached=(SSM,)):
    from rolekeeper.domain.drift import Actual

    role = {
        "RoleName": "app-web",
        "RoleId": "AROA1",
        "AssumeRolePolicyDocument": doc(allow("ec2.amazonaws.com")),
        "Tags": [{"Key": k, "Value": v} for k, v in (tags if tags is not None else {"team": "web"}).items()],
    }
    if boundary:
        role["PermissionsBoundary"] = {"PermissionsBoundaryArn": boundary}
    return Actual(role=role, attached=set(attached))


def test_drift_finds_nothing_on_a_role_as_wanted():
    from rolekeeper.domain.drift import drift

    assert drift(_app(), _actual()) == []


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        ({"boundary": None}, "permissions boundary removed"),
        ({"tags": {}}, "tag team removed"),
        ({"attached": ()}, f"policy {SSM} detached"),
    ],
)
def test_drift_reports_each_wanted_attribute_taken_away(actual, problem):
    from rolekeeper.domain.drift import drift

    assert drift(_app(), _actual(**actual)) == [problem]


@pytest.mark.parametrize(
    "actual",
    [{"boundary": "arn:aws:iam::123456789012:policy/admins-choice"}, {"tags": {"Team": "ops"}}],
    ids=["boundary replaced", "tag value changed"],
)
def test_drift_leaves_what_an_administrator_changed_on_a_role_rolekeeper_created(actual):
    """A boundary replaced or a tag value changed by hand is the administrator's choice (issue 16):
    only a removed one is damage the healer puts back."""
    from rolekeeper.domain.drift import drift

    assert drift(_app(), _actual(**actual)) == []


def test_drift_ignores_a_boundary_when_no_claim_wants_one():
    from rolekeeper.domain.drift import drift

    assert drift(_app(boundary=None), _actual(boundary="arn:aws:iam::123456789012:policy/other")) == []


def test_drift_leaves_an_adopted_roles_boundary_and_tags_to_its_owner():
    from rolekeeper.domain.drift import drift

    assert drift(_app(created=False), _actual(boundary=None, tags={})) == []


def test_drift_checks_only_what_an_event_names():
    from rolekeeper.domain.drift import drift

    damaged = _actual(boundary=None, tags={}, attached=())
    assert drift(_app(), damaged, frozenset({"boundary"})) == ["permissions boundary removed"]
    assert drift(_app(), damaged, frozenset({"tags"})) == ["tag team removed"]
    assert drift(_app(), damaged, frozenset({"policies"}), policy_arn="arn:aws:iam::aws:policy/Other") == []
    assert drift(_app(), damaged, frozenset({"policies"}), policy_arn=SSM) == [f"policy {SSM} detached"]
