"""Waiting for what another writer is doing to an object before changing it: another request's
deletion (with the registry's side of a deletion that is over completed here), and a heal under
way (a writer that takes something away waits for the heal's lease)."""

from __future__ import annotations

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.registry import Objects
from rolekeeper.domain.errors import RetryLater
from rolekeeper.domain.records import Kind, Record
from rolekeeper.retry import DELETION_ELSEWHERE, HEAL_UNDER_WAY, Clock

logger = Logger(child=True)

# A deletion taken this long ago whose role still exists was abandoned (the provisioner's timeout
# is far shorter).
DELETING_STALE_SECONDS = 900


def settled(objects: Objects, key: str, name: str, clock: Clock) -> Record | None:
    """The object as registered once no deletion is under way: another request's last Delete is
    waited for (bounded), and a deletion that is over is completed in the registry."""
    for _ in DELETION_ELSEWHERE.tries(clock):
        record = objects.read(key)
        if record is None or not record.deleting:
            return record
        if settle(objects, record, name, clock):
            record = objects.read(key)
            if record is None or not record.deleting:
                return record
    raise RetryLater(
        f"{name} is being deleted by another stack's request; retry the stack operation in a few minutes"
    )


def settle(objects: Objects, record: Record, name: str, clock: Clock) -> bool:
    """Finish the registry's side of a deletion that is over; True if the record changed."""
    if record.kind == Kind.SLR and record.deletion_task_id:
        status = deletion_status(record.deletion_task_id)
        if status == "SUCCEEDED":  # the role is gone: the next request creates it anew
            return objects.drop(record)
        if status == "FAILED":  # the role is in use and stays: present again
            objects.abort_delete(record.key, record.deleting_by)
            return True
        return False
    if record.kind in (Kind.ROLE, Kind.SLR) and iam.get_role(name) is None:
        # The role is deleted; its deleter's last step (removing the item, or recording a
        # service-linked role's deletion task) is missing.
        return objects.drop(record)
    grant = record.attrs.get("key_arn"), record.attrs.get("grant_id")
    if record.kind == Kind.GRANT and all(grant) and not kms.grant_exists(*grant):  # type: ignore[arg-type]
        return objects.drop(record)  # the grant is revoked; the record's removal is what is missing
    if (
        not record.deletion_task_id
        and record.deleting_since
        and clock.now() - record.deleting_since > DELETING_STALE_SECONDS
    ):
        # Its deleter died before deleting the object or before recording a service-linked
        # role's deletion task (it would have finished within its own timeout): the object is
        # present again, unclaimed.
        objects.abort_delete(record.key, record.deleting_by)
        return True
    return False


def lease_free(objects: Objects, key: str, record: Record | None, name: str, clock: Clock) -> Record | None:
    """The record once no heal holds its lease (read again after each wait): a writer that takes
    something away must not race a heal that planned from the record before it."""
    for attempt in HEAL_UNDER_WAY.tries(clock):
        if attempt:
            record = objects.read(key)
        if record is None or not record.lease.held(clock.now()):
            return record
        logger.info("a heal of the object is under way; waiting for it", key=key)
    raise RetryLater(f"{name} is being healed right now; retry the stack operation in a minute")


def deletion_status(task_id: str) -> str:
    """A service-linked role deletion task's status; a task IAM no longer knows finished long ago."""
    return iam.deletion_status(task_id)[0]
