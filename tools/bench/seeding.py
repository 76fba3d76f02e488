"""N registered roles in an embedded AWS, made fast: one role registered through the real handler,
then N-1 copies of it written straight into moto's IAM and DynamoDB (what registering each would
write, names and unique ids changed), so the reconcile runs against what N registrations leave."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

from tools.bench import ACCOUNT, REGION

PREFIX = "app-bench-"
WIDTH = 5  # app-bench-00000 ... app-bench-09999: no name is a prefix of another


def name_of(i: int) -> str:
    return f"{PREFIX}{i:0{WIDTH}d}"


def index_instance_profiles(patcher: Any) -> None:
    """moto finds a role's instance profiles by looking through every profile for every role it
    lists (Role.instance_profile_list): GetAccountAuthorizationDetails over 10,000 roles with a
    profile each is 10^8 steps. Index the profiles once per such call (the same answer, in
    linear time), so the bench measures rolekeeper rather than moto."""
    from moto.iam import models, responses

    local = threading.local()
    original = models.Role.instance_profile_list

    def instance_profile_list(self: Any) -> list[Any]:
        index = getattr(local, "index", None)
        if index is None:
            return list(original.fget(self))
        return list(index.get(id(self), ()))

    call_action = responses.IamResponse.call_action

    def indexed(self: Any) -> Any:
        if self._get_action() != "GetAccountAuthorizationDetails":
            return call_action(self)
        index: dict[int, list[Any]] = defaultdict(list)
        for profile in self.backend.instance_profiles.values():
            for role in profile.roles:
                index[id(role)].append(profile)
        local.index = index
        try:
            return call_action(self)
        finally:
            local.index = None

    patcher.setattr(models.Role, "instance_profile_list", property(instance_profile_list))
    patcher.setattr(responses.IamResponse, "call_action", indexed)


def plain_scan_responses(patcher: Any) -> None:
    """moto turns a Scan's answer into JSON through its generic model-driven serializer: about 5 s
    for one 1 MB page of registry items, past botocore's read timeout. The answer is already plain
    AttributeValue JSON; send it as it is (the same body, in milliseconds)."""
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.scan

    def scan(self: Any) -> Any:
        return json.dumps(original(self).result)

    patcher.setattr(DynamoHandler, "scan", scan)


def seed(count: int, register: Any) -> None:
    """register(name): the real handler's Create of role `name` (the first one only)."""
    import boto3
    from moto.dynamodb.models import dynamodb_backends
    from moto.iam.models import iam_backends

    from rolekeeper.config import settings
    from rolekeeper.domain.records import role_key

    first = name_of(0)
    register(first)
    iam = iam_backends[ACCOUNT]["aws"]
    table_name = settings().registry_table_name
    db = dynamodb_backends[ACCOUNT][REGION]
    template_role = iam.get_role(first)
    trust = template_role.assume_role_policy_document
    tags = list(template_role.tags)
    policies = [p.arn for p in template_role.managed_policies.values()]
    profiles = [p.name for p in template_role.instance_profile_list]
    items = boto3.client("dynamodb").query(
        TableName=table_name,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": role_key(first)}},
        ConsistentRead=True,
    )["Items"]
    assert items, "the first registration left no registry items"
    template = json.dumps(items)
    old_id = template_role.id
    for i in range(1, count):
        name = name_of(i)
        role = iam.create_role(name, trust, template_role.path, None, template_role.description, tags, None)
        for arn in policies:
            iam.attach_role_policy(arn, name)
        for profile in profiles:
            iam.create_instance_profile(name if profile == first else profile, "/", [name])
        text = template.replace(first, name).replace(old_id, role.id)
        for attributes in json.loads(text):
            db.put_item(table_name, attributes)
