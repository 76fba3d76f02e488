"""A generated corpus of malformed custom resource requests (hypothesis, 800 examples).

Every request is broken on purpose, in exactly one way, starting from a valid one: the envelope
(missing or mistyped fields, a RequestType CloudFormation never sends, a ResponseURL that is not
https), an unknown ResourceType, or one property (wrong JSON type, missing, unknown, oversize,
characters IAM does not accept, malformed ARNs, a property the blueprint does not take).

For each: lambda_handler does not raise; the one response is FAILED with a Reason of 1-256
characters that names the property (or the problem); and no role, instance profile, KMS grant
or registry item appears. The valid starting points are live: the Spot Fleet service-linked
role and a customer managed key exist, so a request that was accidentally valid would create
something and be caught.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tools.devkit import cloudformation
from tools.devkit.embedded import fast_aws, plain
from tools.devkit.environment import OPT_IN
from tools.devkit.events import EVENTS
from tools.devkit.handlers import rebuild_handlers
from tools.devkit.lambda_context import LambdaContext
from tools.devkit.responses import Sent

ACCOUNT = "123456789012"
REGISTRY = "rolekeeper-test-registry"
KEY = "<the corpus key ARN>"  # replaced by the live key's ARN when the request is sent
SSM = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
SPOT_FLEET_ARN = (
    f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet"
)
TEMPLATE = json.loads((EVENTS / "slr-create.json").read_text())
SERVICE_TOKEN = TEMPLATE["ResourceProperties"]["ServiceToken"]
PHYSICAL_ID = f"arn:aws:iam::{ACCOUNT}:role/ecsInstanceRole"

# Valid starting points: (ResourceType, properties).
BASES: dict[str, tuple[str, dict[str, Any]]] = {
    "slr": ("Custom::ServiceLinkedRole", {"AWSServiceName": "spotfleet.amazonaws.com"}),
    "ecs": ("Custom::ServiceRole", {"Blueprint": "ecs-instance"}),
    "app": (
        "Custom::ServiceRole",
        {"Blueprint": "ec2-application", "RoleName": "app-corpus", "ManagedPolicyArns": [SSM]},
    ),
    "grant": ("Custom::SpotFleetKmsGrant", {"KeyId": KEY}),
}

# Property -> its kind, per starting point. "str?" and "bool?" are optional (None is valid there).
FIELDS: dict[str, dict[str, str]] = {
    "slr": {
        "AWSServiceName": "str",
        "CustomSuffix": "str?",
        "Description": "str?",
        "OnDelete": "enum",
        "Heal": "bool",
    },
    "ecs": {
        "Blueprint": "str",
        "RoleName": "str?",
        "Path": "str",
        "ManagedPolicyArns": "list",
        "InstanceProfile": "bool?",
        "PermissionsBoundary": "str?",
        "Tags": "list",
        "OnDelete": "enum",
        "Heal": "bool",
    },
    "grant": {
        "KeyId": "str",
        "GranteePrincipal": "str?",
        "Operations": "list",
        "Constraints": "dict",
        "RetiringPrincipal": "str?",
        "Heal": "bool",
    },
}
FIELDS["app"] = dict(FIELDS["ecs"])
REQUIRED = {
    "slr": ["AWSServiceName"],
    "ecs": ["Blueprint"],
    "app": ["Blueprint", "RoleName"],
    "grant": ["KeyId"],
}
ARN_FIELDS = {
    "ecs": ["PermissionsBoundary", "ManagedPolicyArns"],
    "app": ["PermissionsBoundary", "ManagedPolicyArns"],
    "grant": ["KeyId", "GranteePrincipal", "RetiringPrincipal"],
}
# Python field names too: pydantic would take `role_name` for RoleName (populate_by_name).
KNOWN_NAMES = {
    "ServiceToken",
    "ServiceTimeout",
    *(name for fields in FIELDS.values() for name in fields),
    *[
        "aws_service_name",
        "custom_suffix",
        "description",
        "on_delete",
        "heal",
        "blueprint",
        "role_name",
        "path",
        "managed_policy_arns",
        "instance_profile",
        "confused_deputy_protection",
        "permissions_boundary",
        "tags",
        "key_id",
        "grantee_principal",
        "operations",
        "constraints",
        "retiring_principal",
        "ConfusedDeputyProtection",
    ],
}
GRANT_OPERATIONS = {
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
}
# Characters no IAM/KMS name, ARN, path, tag or description accepts (not \w, not whitespace).
BAD_CHARACTERS = ["\x00", "\x07", "\u202e", "\u200f", "\u2066", "\ufeff", "\U0001f600", "\U0001f4a9"]

# --- values ------------------------------------------------------------------------------------

no_surrogates = st.characters(exclude_categories=("Cs",))
text = st.text(no_surrogates, max_size=30)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
small_lists = st.lists(scalars, min_size=1, max_size=3)
small_dicts = st.dictionaries(text, scalars, min_size=1, max_size=3)
oversize = st.text(no_surrogates, min_size=1001, max_size=1300).filter(lambda s: not s.startswith("arn:"))


def not_a(*words: str) -> Any:
    return text.filter(lambda s: s.strip().lower() not in words)


def wrong_type(kind: str) -> Any:
    """A JSON value of the wrong type for a property of this kind (never one that is valid)."""
    if kind in ("str", "str?"):
        wrong = numbers | st.booleans() | small_lists | small_dicts
        return wrong | st.none() if kind == "str" else wrong
    if kind in ("bool", "bool?"):
        wrong = numbers | small_lists | small_dicts | not_a("true", "false")
        return wrong | st.none() if kind == "bool" else wrong
    if kind == "enum":
        return numbers | st.booleans() | st.none() | small_lists | not_a("retain", "delete")
    if kind == "list":
        return (
            numbers
            | st.booleans()
            | text
            | st.dictionaries(
                text.filter(lambda s: s not in GRANT_OPERATIONS), scalars, min_size=1, max_size=2
            )
            | st.lists(numbers | st.none() | st.booleans() | small_dicts, min_size=1, max_size=3)
        )
    assert kind == "dict"
    return (
        numbers
        | st.booleans()
        | text
        | small_lists
        | st.dictionaries(
            text.filter(lambda s: s not in ("EncryptionContextSubset", "EncryptionContextEquals")),
            scalars,
            min_size=1,
            max_size=2,
        )
    )


def insert_bad(value: str) -> Any:
    return st.tuples(st.integers(0, len(value)), st.sampled_from(BAD_CHARACTERS)).map(
        lambda p: value[: p[0]] + p[1] + value[p[0] :]
    )


UNICODE_IN: dict[str, str] = {
    "AWSServiceName": "spotfleet.amazonaws.com",
    "CustomSuffix": "suffix",
    "Description": "Spot Fleet role",
    "Blueprint": "ecs-instance",
    "RoleName": "app-corpus",
    "Path": "/team/",
    "PermissionsBoundary": "arn:aws:iam::aws:policy/PowerUserAccess",
    "KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "GranteePrincipal": SPOT_FLEET_ARN,
    "RetiringPrincipal": f"arn:aws:iam::{ACCOUNT}:root",
}

MALFORMED_POLICY_ARNS = [
    "AdministratorAccess",
    "arn:aws:iam::aws:polcy/PowerUserAccess",
    "arn:aws:iam:aws:policy/PowerUserAccess",
    "arn:aws:iam::12345:policy/Boundary",
    "arn:aws:iam::1234567890123:policy/Boundary",
    "arn:aws:iam::aws:policy/",
    "arn:aws:s3:::bucket/policy/x",
    "arn:aws:iam::aws:role/PowerUserAccess",
    " arn:aws:iam::aws:policy/PowerUserAccess",
    "arn:aws:iam::aws:policy/Power User",
    "arn:aws-cn:iam::aws:policy/PowerUserAccess",  # well formed, other partition
    "arn::iam::aws:policy/x",
    "arn:aws:iam::aws:policy/x\n",
    "*",
]
MALFORMED_KEY_IDS = [
    "alias/my-key",
    "arn:aws:kms:us-east-1:123456789012:alias/my-key",
    "arn:aws:kmz:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms::123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:us-east-1:12345678901:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:us-east-1:123456789012:1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef",
    "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab/",
    "1234abcd12ab34cd56ef1234567890ab",
    "mrk-1234",
    "arn:aws:kms:us-east-1:123456789012:key/",
    "",
    # well formed, no such key (here, in another region, in another account)
    "1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "arn:aws:kms:us-east-1:999999999999:key/mrk-0123456789abcdef0123456789abcdef",
]
MALFORMED_PRINCIPALS = [
    "AWSServiceRoleForEC2SpotFleet",
    "arn:aws:iam::123456789012:group/admins",
    "arn:aws:sts::123456789012:assumed-role/x/y",
    "arn:aws:iam::12345:root",
    "arn:aws:iam:123456789012:root",
    "spotfleet.amazonaws.com",
    "*",
    "arn:aws:iam::123456789012:role/",
    "arn:aws:iam::123456789012:role/ space",
]
# A GranteePrincipal may be well formed and still wrong: it must be this account's Spot Fleet role.
WRONG_GRANTEES = [
    f"arn:aws:iam::{ACCOUNT}:role/Admin",
    f"arn:aws:iam::{ACCOUNT}:root",
    "arn:aws:iam::999999999999:role/aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet",
    f"arn:aws:iam::{ACCOUNT}:user/jdoe",
]


def malformed_arn(field: str) -> Any:
    if field == "PermissionsBoundary":
        return st.sampled_from(MALFORMED_POLICY_ARNS)
    if field == "ManagedPolicyArns":
        # Well formed but not in AllowedManagedPolicyArns is refused too (any policy may be a boundary).
        not_allowed = ["arn:aws:iam::aws:policy/AdministratorAccess", f"arn:aws:iam::{ACCOUNT}:policy/Mine"]
        return st.lists(st.sampled_from(MALFORMED_POLICY_ARNS + not_allowed), min_size=1, max_size=3)
    if field == "KeyId":
        return st.sampled_from(MALFORMED_KEY_IDS)
    if field == "GranteePrincipal":
        return st.sampled_from(MALFORMED_PRINCIPALS + WRONG_GRANTEES)
    return st.sampled_from(MALFORMED_PRINCIPALS)


# Valid values a starting point does not take.
MISPLACED: dict[str, list[dict[str, Any]]] = {
    "slr": [{"CustomSuffix": "team"}, {"Blueprint": "ecs-instance"}, {"KeyId": KEY}],
    "ecs": [
        {"ManagedPolicyArns": [SSM]},
        {"ConfusedDeputyProtection": "true"},
        {"AWSServiceName": "spot.amazonaws.com"},
        {"RoleName": "Admin"},
        {"Path": "/aws-service-role/x/"},
    ],
    "app": [
        {"ConfusedDeputyProtection": "false"},
        {"RoleName": "ecsInstanceRole2"},
        {"ManagedPolicyArns": [SSM] * 21},
        {"Operations": ["Decrypt"]},
    ],
    "grant": [
        {"Operations": []},
        {"Operations": ["Decrypt", "Unwrap"]},
        {"Operations": ["Decrypt"] * 20},
        {"Constraints": {"EncryptionContextSubset": {"a": 1}}},
        {"Blueprint": "ecs-instance"},
    ],
}
BAD_TAGS = [
    [{"Key": "aws:reserved", "Value": "x"}],
    [{"Key": "team"}],
    [{"Value": "x"}],
    [{"Key": "team", "Value": "x", "Colour": "red"}],
    [{"Key": "Team", "Value": "a"}, {"Key": "team", "Value": "b"}],
    [{"Key": "", "Value": "x"}],
    [{"Key": f"k{i}", "Value": "v"} for i in range(51)],
    ["team=platform"],
    [{"Key": "team", "Value": ["platform"]}],
]


@dataclass(frozen=True)
class Case:
    event: dict[str, Any]
    expect: tuple[str, ...]  # the Reason contains one of these
    why: str


def _event(resource_type: str, props: dict[str, Any], request_type: str) -> dict[str, Any]:
    event = copy.deepcopy(TEMPLATE)
    event["ResourceType"] = resource_type
    event["RequestType"] = request_type
    event["ResourceProperties"] = {"ServiceToken": SERVICE_TOKEN, **props}
    if request_type != "Create":
        event["PhysicalResourceId"] = PHYSICAL_ID
        event["OldResourceProperties"] = {"ServiceToken": SERVICE_TOKEN, **props}
    return event


@st.composite
def property_cases(draw: Any) -> Case:
    base = draw(st.sampled_from(sorted(BASES)))
    resource_type, valid = BASES[base]
    props = copy.deepcopy(valid)
    request_type = draw(st.sampled_from(["Create", "Update"]))
    kinds = ["wrong-type", "oversize", "unicode", "newline", "missing", "unknown", "misplaced"]
    if base in ARN_FIELDS:
        kinds.append("malformed-arn")
    if base in ("ecs", "app"):
        kinds.append("tags")
    how = draw(st.sampled_from(kinds))
    fields = FIELDS[base]
    expect: tuple[str, ...]
    if how == "wrong-type":
        name = draw(st.sampled_from(sorted(fields)))
        props[name] = draw(wrong_type(fields[name]))
        expect = (name,)
    elif how == "oversize":
        name = draw(st.sampled_from(sorted(n for n, k in fields.items() if k.startswith("str"))))
        props[name] = draw(oversize)
        expect = (name,)
    elif how == "unicode":
        name = draw(st.sampled_from(sorted(n for n in fields if n in UNICODE_IN)))
        props[name] = draw(insert_bad(UNICODE_IN[name]))
        expect = (name,)
    elif how == "newline":
        # Python's `$` also matches before a final newline: "ecsInstanceRole\n" is not a role name.
        # IAM's role description pattern admits tab, newline and carriage return: not malformed.
        name = draw(st.sampled_from(sorted(n for n in fields if n in UNICODE_IN and n != "Description")))
        props[name] = UNICODE_IN[name] + "\n"
        expect = (name,)
    elif how == "missing":
        name = draw(st.sampled_from(REQUIRED[base]))
        props.pop(name)
        expect = (name,)
    elif how == "unknown":
        name = draw(
            (text.filter(bool) | st.text(no_surrogates, min_size=1001, max_size=1100)).filter(
                lambda s: s not in KNOWN_NAMES
            )
        )
        props[name] = draw(json_values)
        shown = " ".join(name.split())[:30]
        expect = ("not a known property",) + ((shown,) if shown else ())
    elif how == "malformed-arn":
        name = draw(st.sampled_from(ARN_FIELDS[base]))
        props[name] = draw(malformed_arn(name))
        values = props[name] if isinstance(props[name], list) else [props[name]]
        expect = (name, *(v for v in values if v.strip()))
    elif how == "tags":
        props["Tags"] = draw(st.sampled_from(BAD_TAGS))
        expect = ("Tags",)
    else:
        extra = draw(st.sampled_from(MISPLACED[base]))
        props.update(extra)
        expect = tuple(extra)
    return Case(_event(resource_type, props, request_type), expect, f"{base} {how}")


REQUIRED_ENVELOPE = (
    "RequestType",
    "ResponseURL",
    "StackId",
    "RequestId",
    "LogicalResourceId",
    "ResourceType",
)


@st.composite
def envelope_cases(draw: Any) -> Case:
    base = draw(st.sampled_from(sorted(BASES)))
    resource_type, props = BASES[base]
    request_type = draw(st.sampled_from(["Create", "Update", "Delete"]))
    event: Any = _event(resource_type, copy.deepcopy(props), request_type)
    how = draw(
        st.sampled_from(
            [
                "missing",
                "wrong-type",
                "request-type",
                "response-url",
                "physical-id",
                "properties",
                "not-object",
            ]
        )
    )
    if how == "missing":
        event.pop(draw(st.sampled_from(REQUIRED_ENVELOPE)))
    elif how == "wrong-type":
        event[draw(st.sampled_from(REQUIRED_ENVELOPE))] = draw(
            st.none() | st.booleans() | numbers | small_lists | small_dicts | st.just("")
        )
    elif how == "request-type":
        event["RequestType"] = draw(
            st.sampled_from(["create", "UPDATE", "Delete ", "Replace", "Poll"])
            | text.filter(lambda s: s not in ("Create", "Update", "Delete"))
        )
    elif how == "response-url":
        event["ResponseURL"] = draw(
            st.sampled_from(
                [
                    "http://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x",
                    "ftp://example.com/x",
                    "file:///etc/passwd",
                    "https://",
                    "not a url",
                    "//example.com/x",
                ]
            )
            | text.filter(lambda s: not s.startswith("https://"))
        )
    elif how == "physical-id":
        event["RequestType"] = draw(st.sampled_from(["Update", "Delete"]))
        if draw(st.booleans()):
            event.pop("PhysicalResourceId", None)
        else:
            event["PhysicalResourceId"] = draw(st.none() | numbers | small_lists | small_dicts)
    elif how == "properties":
        event["ResourceProperties"] = draw(st.none() | st.booleans() | numbers | text | small_lists)
    else:
        event = draw(st.none() | st.booleans() | numbers | text | st.lists(json_values, max_size=3))
    return Case(event, ("Malformed request",), f"envelope {how}")


@st.composite
def resource_type_cases(draw: Any) -> Case:
    base = draw(st.sampled_from(sorted(BASES)))
    _resource_type, props = BASES[base]
    name = draw(
        st.sampled_from(
            [
                "Custom::ServiceLinkedRoles",
                "custom::servicerole",
                "AWS::IAM::Role",
                "AWS::IAM::ServiceLinkedRole",
                "Custom::SpotFleetKmsGrant ",
                "Custom::",
                "AWS::CloudFormation::CustomResource",
            ]
        )
        | text.filter(lambda s: s.strip() and s not in {t for t, _ in BASES.values()})
        | oversize
    )
    request_type = draw(st.sampled_from(["Create", "Update"]))
    return Case(_event(name, copy.deepcopy(props), request_type), ("ResourceType",), "resource type")


# --- the live environment (one moto for the module; nothing may change in it) --------------------


@dataclass
class Corpus:
    sent: Sent
    key_arn: str
    cfn: cloudformation.CloudFormation

    def state(self) -> dict[str, Any]:
        iam, kms, dynamodb = plain("iam"), plain("kms"), plain("dynamodb")
        return {
            "roles": sorted((r["RoleName"], r["RoleId"]) for r in iam.list_roles()["Roles"]),
            "profiles": sorted(
                (p["InstanceProfileName"], tuple(r["RoleName"] for r in p["Roles"]))
                for p in iam.list_instance_profiles()["InstanceProfiles"]
            ),
            "grants": sorted(g["GrantId"] for g in kms.list_grants(KeyId=self.key_arn)["Grants"]),
            "registry": sorted(
                (i["pk"]["S"], i["sk"]["S"])
                for i in dynamodb.scan(TableName=REGISTRY)["Items"]
                if i["sk"]["S"] != "REQUEST"  # request markers: bookkeeping, not objects
            ),
        }

    def restore(self, before: dict[str, Any]) -> None:
        """Remove what a request wrongly created, so the next example starts from the same state."""
        iam, kms, dynamodb = plain("iam"), plain("kms"), plain("dynamodb")
        after = self.state()
        for name, _ in set(after["profiles"]) - set(before["profiles"]):
            for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
                iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=name)
        for name, _ in set(after["roles"]) - set(before["roles"]):
            for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
            iam.delete_role(RoleName=name)
        for grant_id in set(after["grants"]) - set(before["grants"]):
            kms.revoke_grant(KeyId=self.key_arn, GrantId=grant_id)
        for pk, sk in set(after["registry"]) - set(before["registry"]):
            dynamodb.delete_item(TableName=REGISTRY, Key={"pk": {"S": pk}, "sk": {"S": sk}})


@pytest.fixture(scope="module")
def corpus() -> Iterator[Corpus]:
    from rolekeeper.handlers import custom_resource

    with pytest.MonkeyPatch.context() as monkeypatch, fast_aws(monkeypatch):
        recorder = Sent()
        custom_resource.configure(sender=recorder)
        rebuild_handlers()
        plain("iam").create_service_linked_role(AWSServiceName="spotfleet.amazonaws.com")
        key_arn = plain("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
        double = cloudformation.CloudFormation()
        cloudformation.install(monkeypatch, double)
        yield Corpus(recorder, key_arn, double)
        custom_resource.configure()


def _with_key(value: Any, key_arn: str) -> Any:
    if isinstance(value, dict):
        return {_with_key(k, key_arn): _with_key(v, key_arn) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_key(v, key_arn) for v in value]
    return value.replace(KEY, key_arn) if isinstance(value, str) else value


# pydantic's own words ("Input should be a valid tuple", "... after validation, not 5000"): no
# template author can act on them; a Reason says what the property must look like instead.
PYDANTIC_WORDS = (
    "input should",
    "after validation",
    "valid tuple",
    "valid dictionary",
    "value error",
    "should have",
)
# Ways of breaking one property whose Reason must give an example of the right form.
SHAPE_PROBLEMS = ("wrong-type", "oversize", "unicode", "newline", "missing")


RESPONSE_BUCKET = "https://cloudformation-custom-resource-response-"


def check(corpus: Corpus, case: Case) -> dict[str, Any]:
    from rolekeeper.handlers.custom_resource import lambda_handler

    request = _with_key(case.event, corpus.key_arn)
    if isinstance(request, dict) and isinstance(request.get("RequestId"), str) and request["RequestId"]:
        request = {**request, "RequestId": str(uuid.uuid4())}  # one RequestId per request, as CloudFormation
        keyed = all(isinstance(request.get(k), str) for k in ("StackId", "LogicalResourceId"))
        if keyed and str(request.get("ResponseURL", "")).startswith(RESPONSE_BUCKET):
            cloudformation.genuine(request)  # the URL CloudFormation gives this request
    before = corpus.state()
    sent_before = len(corpus.sent.responses)
    if (
        isinstance(request, dict)
        and all(isinstance(request.get(k), str) for k in ("StackId", "LogicalResourceId", "RequestType"))
        and request["RequestType"] in ("Create", "Update", "Delete")
    ):
        # CloudFormation's part: a malformed request is still refused for what is wrong with it.
        corpus.cfn.before({"PhysicalResourceId": None, **request})
    try:
        response = lambda_handler(request, LambdaContext())  # must not raise
        after = corpus.state()
    finally:
        corpus.restore(before)
    sent = corpus.sent.responses[sent_before:]
    url = request.get("ResponseURL") if isinstance(request, dict) else None
    deliverable = isinstance(url, str) and urlsplit(url).scheme == "https" and bool(urlsplit(url).hostname)
    assert response is not None, "no response was made"
    assert len(sent) == (1 if deliverable else 0), f"{len(sent)} responses sent ({case.why})"
    if sent:
        assert sent[0] == response
    assert response["Status"] == "FAILED", f"{case.why}: {response}"
    reason = response["Reason"]
    assert reason and len(reason) <= 256, f"{case.why}: Reason of {len(reason)} characters"
    assert any(word in reason for word in case.expect), f"{case.why}: {reason!r} names none of {case.expect}"
    assert not [w for w in PYDANTIC_WORDS if w in reason.lower()], f"{case.why}: {reason!r}"
    if case.why.split()[0] in BASES and case.why.split()[-1] in SHAPE_PROBLEMS:
        assert any(w in reason for w in ("e.g. ", "not a known property", "not known properties")), reason
    assert response["Data"] == {}
    assert after == before, f"{case.why}: something was created"
    return response


SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck))


@settings(SETTINGS, max_examples=500)
@given(case=property_cases())
def test_malformed_properties_are_refused_naming_the_property_and_create_nothing(corpus, case):
    event(case.why)
    check(corpus, case)


@settings(SETTINGS, max_examples=200)
@given(case=envelope_cases())
def test_malformed_envelopes_are_answered_failed_and_create_nothing(corpus, case):
    event(case.why)
    check(corpus, case)


@settings(SETTINGS, max_examples=100)
@given(case=resource_type_cases())
def test_unknown_resource_types_are_refused_and_create_nothing(corpus, case):
    event(case.why)
    check(corpus, case)


@pytest.mark.parametrize(
    ("base", "name", "value"),
    [
        ("ecs", "heal", "false"),
        ("ecs", "blueprint", "ecs-instance"),
        ("app", "role_name", "app-other"),
        ("ecs", "permissions_boundary", "arn:aws:iam::aws:policy/PowerUserAccess"),
        ("slr", "description", "lower-case property name"),
        ("grant", "grantee_principal", SPOT_FLEET_ARN),
    ],
)
def test_property_names_are_exact_not_python_field_names(corpus, base, name, value):
    """Property names are the README's, case and all: `heal` or `role_name` is an
    unknown property, not another spelling of Heal or RoleName."""
    resource_type, valid = BASES[base]
    props = {k: v for k, v in copy.deepcopy(valid).items() if k.lower() != name.replace("_", "")}
    props[name] = value
    if base == "ecs" and name == "blueprint":
        props = {name: value}
    check(
        corpus, Case(_event(resource_type, props, "Create"), ("not a known property", name), f"{base} {name}")
    )


@pytest.mark.parametrize(
    ("base", "name", "value"),
    [
        ("app", "RoleName", "app-corpus\n"),
        ("app", "Path", "/team/\n"),
        ("ecs", "PermissionsBoundary", "arn:aws:iam::aws:policy/PowerUserAccess\n"),
        ("grant", "KeyId", KEY + "\n"),
        ("grant", "RetiringPrincipal", f"arn:aws:iam::{ACCOUNT}:root\n"),
        ("grant", "GranteePrincipal", SPOT_FLEET_ARN + "\n"),
        ("autoscaling", "CustomSuffix", "team\n"),
    ],
)
def test_a_trailing_newline_is_refused(corpus, base, name, value):
    """Python's `$` matches before a final newline, so `re.match("^...$")` lets "name\\n" through."""
    resource_type, valid = BASES.get(base) or (
        "Custom::ServiceLinkedRole",
        {"AWSServiceName": "autoscaling.amazonaws.com"},
    )
    props = {**copy.deepcopy(valid), name: value}
    check(corpus, Case(_event(resource_type, props, "Create"), (name,), f"{base} {name} newline"))


@pytest.mark.parametrize(
    ("base", "props", "reason"),
    [
        (
            "ecs",
            {"Tags": {"team": "platform"}},
            "Tags must be a list of at most 50 {Key, Value} pairs, e.g. Tags: [{Key: team, Value: platform}]",
        ),
        (
            "ecs",
            {"Tags": [{"Key": "team", "Value": f"v{i}"} for i in range(5000)]},
            "Tags must be a list of at most 50 {Key, Value} pairs (5,000 given), e.g. Tags: [{Key: team, Value: platform}]",
        ),
        (
            "app",
            {"RoleName": "Admin"},
            "RoleName Admin is not allowed by this stack: use a name starting with app- (the template "
            "parameter ApplicationRoleNamePrefix), e.g. RoleName: app-web",
        ),
        (
            "ecs",
            {"RoleName": "OrganizationAccountAccessRole"},
            "RoleName OrganizationAccountAccessRole is not allowed by this stack: use a name starting with app- "
            "(the template parameter ApplicationRoleNamePrefix), or the documented name ecsInstanceRole, "
            "e.g. RoleName: app-web",
        ),
        (
            "ecs",
            {"Tags": [{"Key": "colour", "Value": "red"}]},
            "Tags: key colour is not in AllowedTagKeys: remove the tag or add the key to that parameter "
            "(now: a, app, cost-center, env, owner, team)",
        ),
        (
            "app",
            {"ManagedPolicyArns": ["arn:aws:iam::aws:policy/AdministratorAccess"]},
            "ManagedPolicyArns: arn:aws:iam::aws:policy/AdministratorAccess is not in AllowedManagedPolicyArns: "
            "remove it or add it to that parameter (now: "
            "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore, arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy)",
        ),
        ("slr", {"OnDelete": "Keep"}, "OnDelete must be Retain or Delete, e.g. OnDelete: Retain"),
    ],
)
def test_cited_reasons_are_in_the_users_words(corpus, base, props, reason):
    """Issue 17's Reasons, as the function answers them: what the property must look like, with an
    example, naming only template parameters that exist (ApplicationRoleNamePrefix, not AllowedRoleNames)."""
    from rolekeeper.provisioning.answering import short_reason

    resource_type, valid = BASES[base]
    case = Case(
        _event(resource_type, {**copy.deepcopy(valid), **props}, "Create"), tuple(props), f"{base} cited"
    )
    assert check(corpus, case)["Reason"] == short_reason(reason)  # CloudFormation keeps 256 characters


def test_a_typo_in_a_required_property_is_answered_with_the_fix(corpus):
    case = Case(
        _event("Custom::ServiceLinkedRole", {"AwsServiceName": "spot.amazonaws.com"}, "Create"), ("",), "typo"
    )
    assert check(corpus, case)["Reason"] == (
        "AwsServiceName is not a known property: did you mean AWSServiceName? "
        "(known: AWSServiceName, CustomSuffix, Description, OnDelete, Heal)"
    )


def test_an_update_without_physical_id_is_refused_in_plain_english(corpus):
    event = _event("Custom::ServiceLinkedRole", copy.deepcopy(BASES["slr"][1]), "Update")
    event.pop("PhysicalResourceId")
    reason = check(corpus, Case(event, ("Malformed request",), "envelope physical-id"))["Reason"]
    assert reason == "Malformed request: an Update request must carry PhysicalResourceId"
