"""models.parse: what CloudFormation sends (strings everywhere) in, a precise Reason out."""

from __future__ import annotations

from typing import Any

import pytest

from rolekeeper.domain.catalog import DEFAULT_GRANT_OPERATIONS
from rolekeeper.domain.errors import InvalidRequest
from rolekeeper.domain.properties import (
    ServiceLinkedRoleProperties,
    ServiceRoleProperties,
    SpotFleetKmsGrantProperties,
    parse,
)

SLR = "Custom::ServiceLinkedRole"
ROLE = "Custom::ServiceRole"
GRANT = "Custom::SpotFleetKmsGrant"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:us-east-1:123456789012:key/{KEY_ID}"
TOKEN = "arn:aws:lambda:us-east-1:123456789012:function:rolekeeper-ProvisionerFunction"

BASE: dict[str, dict[str, Any]] = {
    SLR: {"AWSServiceName": "spotfleet.amazonaws.com"},
    ROLE: {"Blueprint": "ecs-instance"},
    GRANT: {"KeyId": KEY_ARN},
}


def refused(resource_type: str, properties: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse(resource_type, properties)
    return str(caught.value)


# --- booleans --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"), [("true", True), ("TRUE", True), ("False", False), (" false ", False)]
)
@pytest.mark.parametrize("resource_type", [SLR, ROLE, GRANT])
def test_string_booleans_are_accepted_case_insensitively(resource_type, given, expected):
    props = parse(resource_type, {**BASE[resource_type], "Heal": given})
    assert props.heal is expected


@pytest.mark.parametrize("given", [True, False])
def test_real_booleans_are_accepted(given):
    assert parse(SLR, {**BASE[SLR], "Heal": given}).heal is given


@pytest.mark.parametrize("name", ["InstanceProfile", "Heal"])
@pytest.mark.parametrize(("given", "expected"), [("TRUE", True), ("False", False)])
def test_optional_string_booleans_on_service_role(name, given, expected):
    props = parse(ROLE, {**BASE[ROLE], name: given})
    assert isinstance(props, ServiceRoleProperties)
    field = {"InstanceProfile": "instance_profile", "Heal": "heal"}[name]
    assert getattr(props, field) is expected


def test_confused_deputy_protection_accepts_string_boolean():
    props = parse(ROLE, {"Blueprint": "spot-fleet-tagging", "ConfusedDeputyProtection": "FALSE"})
    assert isinstance(props, ServiceRoleProperties)
    assert props.confused_deputy_protection is False


@pytest.mark.parametrize("given", ["yes", "no", "1", 1, 0, "", [True]])
@pytest.mark.parametrize(
    ("resource_type", "name"),
    [(SLR, "Heal"), (ROLE, "Heal"), (ROLE, "InstanceProfile"), (GRANT, "Heal")],
)
def test_non_boolean_values_are_refused_naming_the_property(resource_type, name, given):
    reason = refused(resource_type, {**BASE[resource_type], name: given})
    assert name in reason
    assert "true or false" in reason


def test_booleans_default_to_true():
    assert parse(SLR, BASE[SLR]).heal is True
    assert parse(GRANT, BASE[GRANT]).heal is True


# --- OnDelete ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Delete", "Delete"),
        ("delete", "Delete"),
        ("DELETE", "Delete"),
        ("retain", "Retain"),
        (" Retain ", "Retain"),
    ],
)
@pytest.mark.parametrize("resource_type", [SLR, ROLE])
def test_on_delete_is_case_insensitive(resource_type, given, expected):
    props = parse(resource_type, {**BASE[resource_type], "OnDelete": given})
    assert props.on_delete == expected  # type: ignore[union-attr]


@pytest.mark.parametrize("given", ["Destroy", "", "Snapshot", 1, True])
def test_on_delete_other_values_are_refused_naming_the_property(given):
    reason = refused(SLR, {**BASE[SLR], "OnDelete": given})
    assert "OnDelete" in reason
    assert "Retain or Delete" in reason


def test_on_delete_defaults_to_retain():
    assert parse(SLR, BASE[SLR]).on_delete == "Retain"  # type: ignore[union-attr]
    assert parse(ROLE, BASE[ROLE]).on_delete == "Retain"  # type: ignore[union-attr]


# --- unknown, missing and mistyped properties -------------------------------------------------


@pytest.mark.parametrize("resource_type", [SLR, ROLE, GRANT])
def test_unknown_property_is_named(resource_type):
    reason = refused(resource_type, {**BASE[resource_type], "RoleNmae": "x"})
    assert "RoleNmae" in reason
    assert "not a known property" in reason


@pytest.mark.parametrize(
    ("resource_type", "required"), [(SLR, "AWSServiceName"), (ROLE, "Blueprint"), (GRANT, "KeyId")]
)
def test_missing_required_property_is_named(resource_type, required):
    reason = refused(resource_type, {"ServiceToken": TOKEN})
    assert reason.startswith(f"{required} is required, e.g. {required}: ")


@pytest.mark.parametrize("properties", [None, {}])
def test_absent_properties_report_the_required_one(properties):
    assert (
        refused(SLR, properties) == "AWSServiceName is required, e.g. AWSServiceName: spotfleet.amazonaws.com"
    )


@pytest.mark.parametrize("properties", ["AWSServiceName=spot.amazonaws.com", ["AWSServiceName"], 5])
def test_properties_must_be_an_object(properties):
    assert "ResourceProperties" in refused(SLR, properties)


WRONG_TYPES = [
    (SLR, {"AWSServiceName": 5}, "AWSServiceName"),
    (SLR, {**BASE[SLR], "Description": 5}, "Description"),
    (SLR, {**BASE[SLR], "CustomSuffix": 7}, "CustomSuffix"),
    (ROLE, {"Blueprint": 5}, "Blueprint"),
    (ROLE, {**BASE[ROLE], "RoleName": 5}, "RoleName"),
    (ROLE, {**BASE[ROLE], "Path": 5}, "Path"),
    (ROLE, {**BASE[ROLE], "PermissionsBoundary": 5}, "PermissionsBoundary"),
    (ROLE, {**BASE[ROLE], "ManagedPolicyArns": [5]}, "ManagedPolicyArns[0]"),
    (ROLE, {**BASE[ROLE], "Tags": [{"Key": 5, "Value": "v"}]}, "Tags[0].Key"),
    (ROLE, {**BASE[ROLE], "Tags": "team=platform"}, "Tags"),
    (GRANT, {"KeyId": 5}, "KeyId"),
    (GRANT, {**BASE[GRANT], "GranteePrincipal": 5}, "GranteePrincipal"),
    (GRANT, {**BASE[GRANT], "RetiringPrincipal": 5}, "RetiringPrincipal"),
    (GRANT, {**BASE[GRANT], "Operations": ["Decrypt", 5]}, "Operations[1]"),
    (GRANT, {**BASE[GRANT], "Constraints": "x"}, "Constraints"),
    (
        GRANT,
        {**BASE[GRANT], "Constraints": {"EncryptionContextSubset": {"a": 5}}},
        "Constraints.EncryptionContextSubset",
    ),
]


@pytest.mark.parametrize(("resource_type", "properties", "name"), WRONG_TYPES)
def test_wrong_types_are_refused_naming_the_property(resource_type, properties, name):
    assert name in refused(resource_type, properties)


BAD_VALUES = [
    (SLR, {"AWSServiceName": "evil.amazonaws.com"}, "AWSServiceName"),
    (SLR, {**BASE[SLR], "CustomSuffix": "has space"}, "CustomSuffix"),
    (ROLE, {"Blueprint": "AdministratorAccess"}, "Blueprint"),
    (ROLE, {**BASE[ROLE], "RoleName": "x" * 65}, "RoleName"),
    (ROLE, {**BASE[ROLE], "Path": "no-slashes"}, "Path"),
    (ROLE, {**BASE[ROLE], "Path": "/aws-service-role/ec2.amazonaws.com/"}, "Path"),
    (ROLE, {**BASE[ROLE], "ManagedPolicyArns": ["AdministratorAccess"]}, "ManagedPolicyArns[0]"),
    (ROLE, {**BASE[ROLE], "PermissionsBoundary": "arn:aws:s3:::bucket"}, "PermissionsBoundary"),
    (ROLE, {**BASE[ROLE], "Tags": [{"Key": "aws:cloudformation:x", "Value": "v"}]}, "Tags[0].Key"),
    (ROLE, {**BASE[ROLE], "Tags": [{"Key": "a", "Value": "1"}, {"Key": "A", "Value": "2"}]}, "Tags"),
    (ROLE, {**BASE[ROLE], "Tags": [{"Key": "a"}]}, "Tags[0].Value"),
    (GRANT, {"KeyId": "alias/my-key"}, "KeyId"),
    (GRANT, {**BASE[GRANT], "GranteePrincipal": "spotfleet.amazonaws.com"}, "GranteePrincipal"),
    (GRANT, {**BASE[GRANT], "Operations": []}, "Operations"),
    (GRANT, {**BASE[GRANT], "Operations": ["Decrypt", "Everything"]}, "Operations"),
]


@pytest.mark.parametrize(("resource_type", "properties", "name"), BAD_VALUES)
def test_bad_values_are_refused_naming_the_property(resource_type, properties, name):
    assert name in refused(resource_type, properties)


ALL_CASES = [
    *WRONG_TYPES,
    *BAD_VALUES,
    (SLR, {**BASE[SLR], "Heal": "yes"}, "Heal"),
    (SLR, {**BASE[SLR], "OnDelete": "Destroy"}, "OnDelete"),
    (SLR, {**BASE[SLR], "Bogus": "1"}, "Bogus"),
    (GRANT, {"ServiceToken": TOKEN}, "KeyId"),
]


@pytest.mark.parametrize(("resource_type", "properties", "name"), ALL_CASES)
def test_every_problem_in_the_message_names_its_property(resource_type, properties, name):
    # One problem each: the Reason starts with the property (path) that needs fixing.
    assert refused(resource_type, properties).startswith(name.split("[")[0].split(".")[0])


def test_several_problems_are_all_reported_each_naming_its_property():
    reason = refused(ROLE, {"Blueprint": "nope", "Heal": "maybe", "Extra": 1})
    problems = reason.split("; ")
    assert len(problems) == 3
    assert sorted(p.split(" ", 1)[0] for p in problems) == ["Blueprint", "Extra", "Heal"]


@pytest.mark.parametrize(
    ("resource_type", "properties", "known"),
    [
        (ROLE, {**BASE[ROLE], "Tags": [{"Key": "a", "Value": "b", "Colour": "red"}]}, ("Key", "Value")),
        (
            GRANT,
            {**BASE[GRANT], "Constraints": {"EncryptionContext": {"a": "b"}}},
            ("EncryptionContextSubset",),
        ),
    ],
)
def test_unknown_nested_property_lists_the_nested_known_names(resource_type, properties, known):
    # The Reason must say what to fix: for a nested object, its own property names, not the
    # resource's top-level ones (Blueprint, RoleName, ...).
    reason = refused(resource_type, properties)
    listed = reason.split("(known: ", 1)[1]
    for name in known:
        assert name in listed, reason
    assert "Blueprint" not in listed
    assert "KeyId" not in listed


# --- normalisation ----------------------------------------------------------------------------


def test_operations_are_deduplicated_in_order():
    props = parse(
        GRANT, {**BASE[GRANT], "Operations": ["Decrypt", "Encrypt", "Decrypt", "DescribeKey", "Encrypt"]}
    )
    assert isinstance(props, SpotFleetKmsGrantProperties)
    assert props.operations == ("Decrypt", "Encrypt", "DescribeKey")


def test_operations_default_to_the_documented_eight():
    props = parse(GRANT, BASE[GRANT])
    assert isinstance(props, SpotFleetKmsGrantProperties)
    assert props.operations == DEFAULT_GRANT_OPERATIONS
    assert len(props.operations) == 8


@pytest.mark.parametrize("resource_type", [SLR, ROLE, GRANT])
def test_service_token_is_ignored(resource_type):
    with_token = parse(resource_type, {**BASE[resource_type], "ServiceToken": TOKEN})
    assert with_token == parse(resource_type, BASE[resource_type])


@pytest.mark.parametrize("resource_type", [SLR, ROLE, GRANT])
def test_service_timeout_is_ignored(resource_type):
    # AWS::CloudFormation::CustomResource's own ServiceTimeout property (1-3600 s) is sent in
    # ResourceProperties like ServiceToken; templates that set it must not be refused.
    props = parse(resource_type, {**BASE[resource_type], "ServiceToken": TOKEN, "ServiceTimeout": "300"})
    assert props == parse(resource_type, BASE[resource_type])


def test_key_id_accepts_arn_and_bare_id():
    assert parse(GRANT, {"KeyId": KEY_ARN}).key_id == KEY_ARN  # type: ignore[union-attr]
    assert parse(GRANT, {"KeyId": KEY_ID}).key_id == KEY_ID  # type: ignore[union-attr]
    assert parse(GRANT, {"KeyId": f"arn:aws-cn:kms:cn-north-1:123456789012:key/{KEY_ID}"})


def test_service_linked_role_properties_parse_the_event_shape():
    props = parse(
        SLR,
        {
            "ServiceToken": TOKEN,
            "AWSServiceName": "autoscaling.amazonaws.com",
            "CustomSuffix": "fleet",
            "Description": "made by rolekeeper",
            "OnDelete": "delete",
            "Heal": "false",
        },
    )
    assert props == ServiceLinkedRoleProperties(
        aws_service_name="autoscaling.amazonaws.com",
        custom_suffix="fleet",
        description="made by rolekeeper",
        on_delete="Delete",
        heal=False,
    )


@pytest.mark.parametrize("resource_type", ["Custom::Nope", "AWS::IAM::Role", "Custom::servicelinkedrole", ""])
def test_unknown_resource_type_is_refused(resource_type):
    reason = refused(resource_type, {"AWSServiceName": "spot.amazonaws.com"})
    assert "ResourceType" in reason
    assert repr(resource_type) in reason
    assert "Custom::ServiceLinkedRole" in reason


# --- Reasons in the user's words (issue 17, item 6) -----------------------------------------------

# What pydantic says in its own words; a template author can act on none of it.
PYDANTIC_WORDS = (
    "input should",
    "after validation",
    "valid tuple",
    "valid dictionary",
    "value error",
    "should have",
)


@pytest.mark.parametrize(("resource_type", "properties", "name"), ALL_CASES)
def test_reasons_say_what_the_property_must_look_like_not_pydantics_words(resource_type, properties, name):
    reason = refused(resource_type, properties)
    assert not [w for w in PYDANTIC_WORDS if w in reason.lower()], reason
    assert "e.g. " in reason or "not a known property" in reason, reason


@pytest.mark.parametrize(
    ("resource_type", "properties", "reason"),
    [
        (
            ROLE,
            {**BASE[ROLE], "Tags": {"team": "platform"}},
            "Tags must be a list of at most 50 {Key, Value} pairs, e.g. Tags: [{Key: team, Value: platform}]",
        ),
        (
            ROLE,
            {**BASE[ROLE], "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(5000)]},
            "Tags must be a list of at most 50 {Key, Value} pairs (5,000 given), e.g. Tags: [{Key: team, Value: platform}]",
        ),
        (
            ROLE,
            {**BASE[ROLE], "Tags": ["team=platform"]},
            "Tags[0] must be a {Key, Value} pair, e.g. {Key: team, Value: platform}",
        ),
        (
            ROLE,
            {**BASE[ROLE], "ManagedPolicyArns": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"},
            "ManagedPolicyArns must be a list of at most 20 IAM policy ARNs, "
            "e.g. ManagedPolicyArns: [arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore]",
        ),
        (SLR, {**BASE[SLR], "OnDelete": "Keep"}, "OnDelete must be Retain or Delete, e.g. OnDelete: Retain"),
        (
            ROLE,
            {"Blueprint": "ecs"},
            "Blueprint must be one of spot-fleet-tagging, ecs-instance, batch-service, ec2-application, "
            "e.g. Blueprint: ecs-instance",
        ),
        (
            GRANT,
            {**BASE[GRANT], "Operations": ["Decrypt", "Unwrap"]},
            "Operations must be KMS grant operations (Unwrap is not one), e.g. Operations: [Decrypt, DescribeKey]",
        ),
        (
            GRANT,
            {**BASE[GRANT], "Constraints": {"EncryptionContextSubset": {"a": 5}}},
            "Constraints.EncryptionContextSubset.a must be text, e.g. platform",
        ),
    ],
)
def test_cited_reasons_are_in_the_users_words(resource_type, properties, reason):
    assert refused(resource_type, properties) == reason


def test_a_misspelt_required_property_is_a_did_you_mean_not_also_missing():
    # AWSServiceName is required and AwsServiceName unknown: one problem, the fix first.
    assert refused(SLR, {"AwsServiceName": "spot.amazonaws.com"}) == (
        "AwsServiceName is not a known property: did you mean AWSServiceName? "
        "(known: AWSServiceName, CustomSuffix, Description, OnDelete, Heal)"
    )
    assert refused(ROLE, {**BASE[ROLE], "role_name": "app-x"}).startswith(
        "role_name is not a known property: did you mean RoleName?"
    )


def test_unknown_properties_are_named_once_and_the_known_list_given_once():
    reason = refused(ROLE, {**BASE[ROLE], **{f"Unknown{i:04d}": "x" for i in range(2000)}})
    assert reason == (
        "Unknown0000, Unknown0001, Unknown0002, Unknown0003, Unknown0004 and 1,995 more are not known "
        "properties (known: Blueprint, RoleName, Path, ManagedPolicyArns, InstanceProfile, "
        "ConfusedDeputyProtection, PermissionsBoundary, Tags, OnDelete, Heal)"
    )
    two = refused(ROLE, {**BASE[ROLE], "Colour": "red", "Heall": "true"})
    assert two == (
        "Colour, Heall (did you mean Heal?) are not known properties (known: Blueprint, RoleName, Path, "
        "ManagedPolicyArns, InstanceProfile, ConfusedDeputyProtection, PermissionsBoundary, Tags, OnDelete, Heal)"
    )


def test_a_long_unknown_name_is_shown_short_and_on_one_line():
    reason = refused(SLR, {**BASE[SLR], "x\n" * 600: "1"})
    assert len(reason) < 200
    assert "\n" not in reason
