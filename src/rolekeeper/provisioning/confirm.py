"""Is this request really CloudFormation's? Identity from the function, state from CloudFormation.

Anyone allowed to invoke the function can hand it any event, so nothing in the event is trusted
by itself: the account and partition are the function's own, and a request acts only when
CloudFormation shows the resource in the state it is in when it sends that request type.

CloudFormation's documented behaviour this relies on (AWS CloudFormation User Guide, "Custom
resource request types" Create/Update/Delete, and "Stack status codes"):
- Create is sent while the resource is CREATE_IN_PROGRESS (stack CREATE_IN_PROGRESS, or
  UPDATE_IN_PROGRESS when an update adds the resource).
- Update is sent while the resource is UPDATE_IN_PROGRESS with that physical id: during an update
  (stack UPDATE_IN_PROGRESS), and when an update rolls back (stack UPDATE_ROLLBACK_IN_PROGRESS,
  where the previous properties are sent again to the physical id the resource has).
- The resource's type is the request's ResourceType (a Custom:: name, or
  AWS::CloudFormation::CustomResource).
- Delete is sent while the resource is DELETE_IN_PROGRESS with that physical id: stack deletion
  (DELETE_IN_PROGRESS), rollback of a failed create (ROLLBACK_IN_PROGRESS), a resource removed
  from the template (UPDATE_COMPLETE_CLEANUP_IN_PROGRESS) or one added by an update that rolled
  back (UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS).
- A returned physical id that differs from the old one is a replacement: the old physical id gets
  a Delete during UPDATE_COMPLETE_CLEANUP_IN_PROGRESS ("removal of old resources after a
  successful stack update"); after a failed update the new one gets a Delete during
  UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS. The resource itself then shows the physical id
  it keeps, so DescribeStacks is asked for the stack's status.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from rolekeeper.aws import cloudformation
from rolekeeper.domain.catalog import Scope
from rolekeeper.domain.errors import Unconfirmed

STACK_ARN = re.compile(
    r"^arn:(aws[a-z-]*):cloudformation:([a-z0-9-]+):(\d{12}):stack/([A-Za-z][A-Za-z0-9-]{0,127})/[A-Za-z0-9-]+$"
)
REPLACEMENT_CLEANUP = frozenset(
    {"UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"}
)
RESOURCE_STATUS_FOR = {
    "Create": "CREATE_IN_PROGRESS",
    "Update": "UPDATE_IN_PROGRESS",
    "Delete": "DELETE_IN_PROGRESS",
}


def identity_for(invoked_function_arn: str, stack_id: str, *, sam_local: bool = False) -> Scope:
    """The scope a request runs in. The StackId must name this function's own partition,
    account and region; under sam local (a made-up function ARN) the StackId's own is used."""
    match = STACK_ARN.fullmatch(stack_id)
    if match is None:
        raise Unconfirmed("StackId is not a CloudFormation stack ARN")
    if sam_local:
        return Scope(partition=match.group(1), region=match.group(2), account=match.group(3))
    own = Scope.from_arn(invoked_function_arn)
    if (match.group(1), match.group(3), match.group(2)) != (own.partition, own.account, own.region):
        raise Unconfirmed(
            f"StackId names {match.group(1)}/{match.group(3)}/{match.group(2)}; this rolekeeper serves "
            f"stacks in {own.partition}/{own.account}/{own.region} only"
        )
    return own


def confirm(
    request_type: str,
    resource_type: str,
    stack_id: str,
    logical_id: str,
    physical_id: str | None,
    object_of: Callable[[str | None], str | None],
) -> None:
    """Raise Unconfirmed unless CloudFormation is sending this request now. object_of names the
    object a physical id stands for (so an id spelled differently cannot pass for another one)."""
    resource = cloudformation.describe_resource(stack_id, logical_id)
    if not resource:
        raise Unconfirmed(
            f"CloudFormation knows no resource {logical_id} in that stack; request not confirmed"
        )
    status = resource.get("ResourceStatus", "")
    current = resource.get("PhysicalResourceId")
    if resource.get("ResourceType") != resource_type:
        raise Unconfirmed(
            f"CloudFormation shows {logical_id} as a {resource.get('ResourceType')}; request not confirmed"
        )
    wanted = RESOURCE_STATUS_FOR[request_type]
    if request_type == "Create" and status == wanted:
        return
    if request_type in ("Update", "Delete") and status == wanted and current == physical_id:
        return
    if (
        request_type == "Delete"
        and current is not None
        and object_of(physical_id) != object_of(current)
        and cloudformation.stack_status(stack_id) in REPLACEMENT_CLEANUP
    ):
        return  # the cleanup of a replaced physical id (another object than the current one)
    raise Unconfirmed(
        f"CloudFormation shows {logical_id} as {status or 'unknown'}, not a {request_type} in progress "
        "for that physical id; request not confirmed, nothing changed"
    )


# CloudFormation answers custom resources through a pre-signed URL on its own response bucket in
# the stack's region: "cloudformation-custom-resource-response-<region without dashes>" (AWS
# CloudFormation User Guide, "Setting up VPC endpoints for AWS CloudFormation": the buckets custom
# resources respond to), the object key "<StackId>|<LogicalResourceId>|<RequestId>" URL-encoded
# (as every real request's ResponseURL shows). Only CloudFormation can sign a PUT that bucket
# accepts, so a request whose answer the bucket refuses was not CloudFormation's (intents.py).
RESPONSE_BUCKET = "cloudformation-custom-resource-response-{region}"
SIGNATURES = ("X-Amz-Signature", "Signature")  # SigV4 and SigV2 query authentication


def response_url(
    url: str, scope: Scope, stack_id: str, logical_id: str, request_id: str, *, local: bool = False
) -> None:
    """Raise Unconfirmed unless url is a pre-signed URL on CloudFormation's response bucket for
    this region and partition, keyed by this request. local: also an http(s) URL on this machine
    (make demo, the tests' receivers); never set in a deployed stack."""
    parts = urlsplit(url)
    if local and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return
    suffix = "amazonaws.com.cn" if scope.partition == "aws-cn" else "amazonaws.com"
    bucket = RESPONSE_BUCKET.format(region=scope.region.replace("-", ""))
    hosts = {
        f"{bucket}.s3.{suffix}",
        f"{bucket}.s3.{scope.region}.{suffix}",
        f"{bucket}.s3-{scope.region}.{suffix}",
    }
    query = parse_qs(parts.query)
    if (
        parts.scheme != "https"
        or parts.hostname not in hosts
        or parts.port not in (None, 443)
        or unquote(parts.path.removeprefix("/")) != f"{stack_id}|{logical_id}|{request_id}"
        or not any(name in query for name in SIGNATURES)
    ):
        raise Unconfirmed(
            "ResponseURL is not CloudFormation's response URL for this request in "
            f"{scope.partition}/{scope.region}; request not confirmed, nothing changed"
        )
