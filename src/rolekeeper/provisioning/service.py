"""What each custom resource request does: validate, converge, record the claim, answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger

from rolekeeper.aws import iam, kms
from rolekeeper.aws.registry import Registry
from rolekeeper.config import Settings
from rolekeeper.convergence.grants import converge_grant, reissue_stale_grants
from rolekeeper.convergence.linked_roles import converge_linked_role
from rolekeeper.convergence.outcomes import RoleOutcome, role_attrs
from rolekeeper.convergence.roles import converge_role, prune_role, undo_created_role
from rolekeeper.domain import ownership
from rolekeeper.domain.catalog import SPOT_FLEET_ROLE_NAME
from rolekeeper.domain.errors import Changed, HealInProgress, InvalidRequest, ObjectGone, RolekeeperError
from rolekeeper.domain.properties import (
    ServiceLinkedRoleProperties,
    ServiceRoleProperties,
    SpotFleetKmsGrantProperties,
    parse,
)
from rolekeeper.domain.records import (
    GRANT_PHYSICAL_ID,
    ROLE_ARN,
    Claim,
    Record,
    grant_key,
    object_key,
    role_key,
)
from rolekeeper.domain.specs import GrantSpec
from rolekeeper.domain.validation import grant_spec, linked_role_spec, role_spec
from rolekeeper.provisioning.requests import Request, Response

logger = Logger(child=True)


# A request that finds its object changed by another writer reads it again and converges again,
# this many times at most.
COMMIT_ATTEMPTS = 6
# Waiting for another request's deletion of the object (seconds between looks; about 15 s in all).
SETTLE_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
# A last Delete waits this long for a heal under way to finish before deleting the object.
HEAL_WAIT_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)
# A deletion taken this long ago whose role still exists was abandoned (the provisioner's timeout
# is far shorter).
DELETING_STALE_SECONDS = 900
sleep: Callable[[float], None] = time.sleep


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _role_data(outcome: RoleOutcome, created: bool) -> dict[str, str]:
    data = {
        "RoleName": outcome.name,
        "Arn": outcome.arn,
        "RoleId": outcome.role_id,
        "Created": _flag(created),
    }
    if outcome.instance_profile_name and outcome.instance_profile_arn:
        data["InstanceProfileName"] = outcome.instance_profile_name
        data["InstanceProfileArn"] = outcome.instance_profile_arn
    return data


class Provisioner:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    # --- Create / Update -----------------------------------------------------------------------

    def converge(self, request: Request) -> Response:
        props = parse(request.resource_type, request.properties)
        if isinstance(props, ServiceLinkedRoleProperties):
            return self._linked_role(request, props)
        if isinstance(props, ServiceRoleProperties):
            return self._service_role(request, props)
        return self._grant(request, props)

    def _linked_role(self, request: Request, props: ServiceLinkedRoleProperties) -> Response:
        spec = linked_role_spec(props, self.settings)
        claim = Claim(request.stack_id, request.logical_id, props.heal, props.on_delete, wants=spec.to_dict())
        name = spec.role_name
        outcome, created, read, made = self._converge_object(
            request,
            role_key(name),
            "slr",
            name,
            lambda _record: (spec.to_dict(), converge_linked_role(spec)),
            claim,
            undo=lambda _pieces: iam.delete_service_linked_role(name),
        )
        if name == SPOT_FLEET_ROLE_NAME:
            # Recreated outside rolekeeper (a new unique id): grants made for the old one are stale.
            grantee = {"RoleName": outcome.name, "Arn": outcome.arn, "RoleId": outcome.role_id}
            outcome.changes += reissue_stale_grants(self.registry, grantee)
        logger.info("service-linked role converged", role_name=outcome.name, changes=outcome.changes)
        return Response(
            outcome.arn,
            _role_data(outcome, created),
            key=role_key(name),
            previous=read.claim_of(claim.sk) if read else None,
            made=made,
        )

    def _service_role(self, request: Request, props: ServiceRoleProperties) -> Response:
        spec = role_spec(props, self.settings, request.scope)
        key = role_key(spec.name)
        claim = Claim(request.stack_id, request.logical_id, props.heal, props.on_delete, wants=spec.to_dict())

        def attempt(record: Record | None) -> tuple[dict[str, Any], RoleOutcome]:
            others = ownership.other_wants(record, request.claim_sk)
            if problem := ownership.conflict(spec, others):
                raise InvalidRequest(problem)
            desired = ownership.union([spec, *others])
            outcome = converge_role(
                desired,
                added=ownership.added_of(record),
                created_role_id=ownership.created_role_id(record),
                adoption_refusal=lambda role: ownership.adoption_refusal(
                    spec, role, props.confused_deputy_protection
                ),
                prune=request.request_type == "Update",
            )
            return desired.to_dict(), outcome

        outcome, created, read, made = self._converge_object(
            request,
            key,
            "role",
            spec.name,
            attempt,
            claim,
            undo=lambda pieces: undo_created_role(spec.name, profile_created="profile" in pieces),
        )
        self.registry.taken_away(key, outcome.removed)
        logger.info("service role converged", role_name=spec.name, changes=outcome.changes)
        return Response(
            outcome.arn,
            _role_data(outcome, created),
            key=key,
            previous=read.claim_of(claim.sk) if read else None,
            made=made,
        )

    def _converge_object(
        self,
        request: Request,
        key: str,
        kind: str,
        name: str,
        attempt: Callable[[Record | None], tuple[dict[str, Any], RoleOutcome]],
        claim: Claim,
        *,
        undo: Callable[[set[str]], str | None],
    ) -> tuple[RoleOutcome, bool, Record | None, bool]:
        """Read the object, converge it, and write the object with this claim at the version that
        was read; when another writer changed it meanwhile, read and converge again (bounded).
        Returns the outcome, whether rolekeeper created the object (ever), the record as first
        read, and whether this request created the AWS object."""
        made = False
        pieces: set[str] = set()  # what the request's attempts made (the role's profile)
        first: Record | None = None
        for number in range(COMMIT_ATTEMPTS):
            record = self._settled(key, name)
            if number == 0:
                first = record
            desired, outcome = attempt(record)
            made = made or outcome.created
            pieces |= outcome.made
            try:
                created = self.registry.commit(
                    key,
                    kind,
                    desired,
                    read=record,
                    # made: an earlier attempt of this request created it (and lost the race to
                    # write the record first).
                    created_now=made or outcome.ours,
                    attrs=role_attrs(outcome),
                    added=outcome.added,
                    claim=claim,
                    # Only a request that takes pieces away (an Update pruning what the claims no
                    # longer want) depends on the other claims as read; one that only adds needs
                    # the object present and not being deleted.
                    check_version=kind == "role" and request.request_type == "Update",
                )
            except Changed:
                logger.info("object changed by another writer; reading it again", key=key, attempt=number + 1)
                sleep(0.2 * (number + 1))
                continue
            except Exception:
                if made:
                    self._roll_back(request, key, name, undo, pieces)
                raise
            return outcome, created, first, made
        if made:
            self._roll_back(request, key, name, undo, pieces)
        raise RolekeeperError(
            f"{name} kept changing under concurrent requests ({COMMIT_ATTEMPTS} attempts); retry the stack operation"
        )

    def _settled(self, key: str, name: str) -> Record | None:
        """The object as registered once no deletion is under way: a last Delete elsewhere is
        waited for (bounded), and a service-linked role's finished deletion task is cleared."""
        for delay in (*SETTLE_DELAYS, None):
            record = self.registry.get(key)
            if record is None or not record.deleting:
                return record
            if self._settle(record, name):
                continue
            if delay is None:
                break
            sleep(delay)
        raise RolekeeperError(
            f"{name} is being deleted by another stack's request; retry the stack operation in a few minutes"
        )

    def _settle(self, record: Record, name: str) -> bool:
        """Finish the registry's side of a deletion that is over; True if the record changed."""
        if record.kind == "slr" and record.deletion_task_id:
            status = _deletion_status(record.deletion_task_id)
            if status == "SUCCEEDED":  # the role is gone: the next request creates it anew
                return self.registry.drop(record)
            if status == "FAILED":  # the role is in use and stays: present again
                self.registry.abort_delete(record.key, record.deleting_by)
                return True
            return False
        if record.kind == "role" and iam.get_role(name) is None:
            # The role is deleted; its deleter's last step (removing the item) is missing.
            return self.registry.drop(record)
        if (
            record.kind == "role"
            and record.deleting_since
            and time.time() - record.deleting_since > DELETING_STALE_SECONDS
        ):
            # Its deleter died before deleting the role (it would have finished within its own
            # timeout): the role is present again, unclaimed.
            self.registry.abort_delete(record.key, record.deleting_by)
            return True
        return False

    def _roll_back(
        self, request: Request, key: str, name: str, undo: Callable[[set[str]], str | None], pieces: set[str]
    ) -> None:
        """Remove the AWS object this request created, unless a claim now holds it (another stack
        adopted it meanwhile): the deletion is taken in the registry first, like a last Delete."""
        token = f"rollback:{request.token}"
        try:
            taken = self.registry.begin_delete(key, token, now=time.time(), absent_too=True)
        except HealInProgress:
            taken = None
        except Exception:
            logger.exception("could not take the object for rollback; left in place", role_name=name)
            return
        if taken is None:
            logger.warning("object this request created is held by another claim; kept", role_name=name)
            return
        logger.warning("registry write failed; removing the object this request created", role_name=name)
        task_id = None
        try:
            task_id = undo(pieces)
        except Exception:
            logger.exception("could not remove the object this request created", role_name=name)
        try:
            self.registry.finish_delete(key, token, task_id=task_id)
        except Exception:
            logger.exception("could not remove the registry record", key=key)

    def grant_spec(
        self, request: Request, props: SpotFleetKmsGrantProperties
    ) -> tuple[GrantSpec, dict[str, Any]]:
        key = kms.describe_key(props.key_id)
        tags = kms.key_tags(key["Arn"]) if key.get("KeyManager") == "CUSTOMER" else {}
        grantee = iam.get_role(SPOT_FLEET_ROLE_NAME)
        spec = grant_spec(props, key, tags, grantee, request.scope, request.stack_id, request.logical_id)
        assert grantee is not None  # grant_spec refuses a missing grantee
        return spec, grantee

    def _grant(self, request: Request, props: SpotFleetKmsGrantProperties) -> Response:
        spec, grantee = self.grant_spec(request, props)
        outcome = converge_grant(spec, grantee)
        physical_id = f"{spec.key_arn}#{outcome.grant_id}"
        key = grant_key(physical_id)
        claim = Claim(request.stack_id, request.logical_id, props.heal, "Delete", wants=spec.to_dict())
        attrs = {
            "key_arn": spec.key_arn,
            "grant_id": outcome.grant_id,
            "grant_name": outcome.name,
            "grantee_arn": outcome.grantee_arn,
            "grantee_role": spec.grantee_role_name.lower(),
            "grantee_role_id": outcome.grantee_role_id,
        }
        try:
            for number in range(COMMIT_ATTEMPTS):
                read = self.registry.get(key)
                try:
                    self.registry.commit(
                        key, "grant", spec.to_dict(), read=read, created_now=True, attrs=attrs, claim=claim
                    )
                    break
                except Changed:
                    sleep(0.2 * (number + 1))
            else:
                raise RolekeeperError(
                    f"grant {outcome.grant_id} kept changing under concurrent requests; retry"
                )
        except Exception:
            # Only a grant no record holds is this request's to take back (KMS's Name idempotency
            # may have returned a grant another physical id still references).
            if physical_id != request.physical_id and not self.registry.grants_by_id(outcome.grant_id):
                kms.revoke_grant(spec.key_arn, outcome.grant_id)
            raise
        logger.info("grant converged", key_arn=spec.key_arn, grant_id=outcome.grant_id)
        return Response(
            physical_id,
            {
                "GrantId": outcome.grant_id,
                "GrantToken": outcome.grant_token,
                "KeyArn": spec.key_arn,
                "GranteePrincipal": outcome.grantee_arn,
            },
        )

    def abandon(self, request: Request, response: Response) -> None:
        """Undo what a request whose answer (FAILED at the deadline) already went out did itself:
        CloudFormation will not own it. An Update puts its claim back as it was and converges the
        role to the claims' wants again; a Create releases its claim, and deletes the object only
        if it created it and no other claim holds it."""
        if response.key is not None and (match := ROLE_ARN.fullmatch(response.physical_id)):
            name = match.group(4)
            if response.previous is not None:
                self.registry.claim(response.key, response.previous)
                self._reconverge(response.key, name, restore=True)
            else:
                known = self.registry.get(response.key)
                claim = known.claim_of(request.claim_sk) if known else None
                if known is not None and claim is not None:
                    self.registry.release(response.key, request.stack_id, request.logical_id)
                    on_delete = "Delete" if response.made else "Retain"
                    self._after_release(
                        request, response.key, name, replace(claim, on_delete=on_delete), known
                    )
        elif response.physical_id != request.physical_id and "#" in response.physical_id:
            self._delete_grant(request, response.physical_id)
        logger.warning("late result abandoned", physical_id=response.physical_id)

    # --- Delete --------------------------------------------------------------------------------

    def delete(self, request: Request) -> Response:
        physical_id = request.physical_id or ""
        if (match := ROLE_ARN.fullmatch(physical_id)) and (match.group(1), match.group(2)) == (
            request.scope.partition,
            request.scope.account,
        ):
            self._delete_role(request, match.group(4), physical_id)
        elif GRANT_PHYSICAL_ID.fullmatch(physical_id):
            self._delete_grant(request, physical_id)
        else:
            logger.info("physical id not produced by rolekeeper; nothing to delete", physical_id=physical_id)
        return Response(physical_id)

    def acts_on(self, request: Request) -> bool:
        """Whether the request may change anything (a Delete of an id rolekeeper never produced
        touches nothing, so it needs no confirmation)."""
        return request.request_type != "Delete" or object_key(request.physical_id) != request.physical_id

    def _delete_role(self, request: Request, name: str, physical_id: str) -> None:
        key = role_key(name)
        # One consistent read: the object and every claim. Delete acts on this resource's claim as
        # stored (OnDelete as last confirmed), never on the request's properties, and only for the
        # physical id rolekeeper answered (the role's exact ARN).
        known = self.registry.get(key)
        claim = known.claim_of(request.claim_sk) if known else None
        if known is not None and known.attrs.get("arn") not in (None, physical_id):
            logger.info("physical id is not the role's ARN; nothing to delete", physical_id=physical_id)
            return
        if known is not None and known.deleting and claim is None:
            self._settle(known, name)  # a retry after a Delete that failed at its very last step
        if known is None or claim is None:
            logger.info("no claim held by this resource; nothing to delete", role_name=name)
            return
        # False: an earlier attempt of this request released it and its answer was lost. Go on
        # either way: what follows is conditional on the registry, so it happens once.
        self.registry.release(key, request.stack_id, request.logical_id)
        self._after_release(request, key, name, claim, known)

    def _after_release(self, request: Request, key: str, name: str, claim: Claim, known: Record) -> None:
        """The claim is released: delete the object if the claim asked for it and it was the last
        one (exactly one writer takes it for deletion), else take away what only it wanted."""
        try:
            if claim.on_delete == "Delete":
                token = request.token
                record = self._take_for_deletion(key, name, token)
                if record is not None:
                    try:
                        task_id = self._delete_object(name, record)
                    except Exception:
                        self.registry.abort_delete(key, token)
                        raise
                    self.registry.finish_delete(key, token, task_id=task_id)
                    if task_id and _deletion_status(task_id) == "SUCCEEDED":
                        self.registry.drop(record)  # already over: nothing left to wait for
                    return
            if known.kind == "role" and any(c.sk != claim.sk for c in known.claims):
                self._reconverge(key, name)
            else:
                logger.info("claim released; role retained", role_name=name)
        except Exception:
            # Put the claim back so CloudFormation's retry of this Delete finishes it.
            self._restore(key, claim)
            raise

    def _take_for_deletion(self, key: str, name: str, token: str) -> Record | None:
        for delay in (*HEAL_WAIT_DELAYS, None):
            try:
                return self.registry.begin_delete(key, token, now=time.time())
            except HealInProgress:
                if delay is None:
                    break
                logger.info("a heal of the object is under way; waiting for it", role_name=name)
                sleep(delay)
        raise RolekeeperError(f"{name} is being healed right now; retry the deletion in a minute")

    def _delete_object(self, name: str, record: Record) -> str | None:
        """Delete the AWS object; a service-linked role's deletion task id (IAM finishes it later)."""
        if record.kind == "slr":
            task_id = iam.delete_service_linked_role(name)
            logger.info("service-linked role deletion submitted", role_name=name, deletion_task_id=task_id)
            return task_id
        role = iam.get_role(name)
        if role is not None and not ownership.is_ours(record, role):
            logger.warning("role was replaced by one rolekeeper did not create; left alone", role_name=name)
            return None
        made_profile = ownership.PROFILE in ownership.added_of(record)
        iam.delete_role(name, name if made_profile else None)
        logger.info("role deleted", role_name=name)
        return None

    def _reconverge(self, key: str, name: str, *, restore: bool = False) -> None:
        """Other claims remain: take away what only the released claim wanted (and rolekeeper
        added). restore: also put back what the claims want (an abandoned Update's late changes).
        With no claim left (OnDelete Retain, or a role rolekeeper did not create), the role stays
        as it is."""
        for number in range(COMMIT_ATTEMPTS):
            record = self.registry.get(key)
            if record is None or record.kind != "role" or not record.claims or record.deleting:
                logger.info("claim released; role retained", role_name=name)
                return
            desired = ownership.desired_of(record)
            added, created_role_id = ownership.added_of(record), ownership.created_role_id(record)
            # After a lost race (the record changed while pruning by what was read), converge: put
            # back what a claim written meanwhile wants and the prune took away.
            outcome = (
                converge_role(
                    desired, added=added, created_role_id=created_role_id, prune=True, rollback=False
                )
                if restore or number
                else prune_role(desired, added=added, created_role_id=created_role_id)
            )
            try:
                self.registry.commit(
                    key, "role", desired.to_dict(), read=record, created_now=False, attrs=record.attrs
                )
            except Changed:
                sleep(0.2 * (number + 1))
                continue
            if outcome is not None:
                self.registry.taken_away(key, outcome.removed)
            logger.info(
                "claim released; other claims remain",
                role_name=name,
                changes=outcome.changes if outcome else [],
            )
            return
        logger.warning("role kept changing; the next request or the reconcile converges it", role_name=name)

    def _delete_grant(self, request: Request, physical_id: str) -> None:
        key = grant_key(physical_id)
        record = self.registry.get(key)
        claim = record.claim_of(request.claim_sk) if record else None
        if claim is None:
            logger.info("no claim held by this resource; nothing to revoke", physical_id=physical_id)
            return
        self.registry.release(key, request.stack_id, request.logical_id)  # False: released before
        try:
            key_arn, original = physical_id.rsplit("#", 1)
            current = record.attrs.get("grant_id", original) if record is not None else original
            for grant_id in dict.fromkeys((current, original)):
                # KMS's Name idempotency can hand the same grant to a new physical id (an Update
                # that changed only Heal, after a heal re-issued it): a grant another record
                # still references is live, and stays.
                if any(other.key != key for other in self.registry.grants_by_id(grant_id)):
                    logger.info("grant still held under another physical id; kept", grant_id=grant_id)
                    continue
                revoked = kms.revoke_grant(key_arn, grant_id)
                logger.info("grant revoked" if revoked else "grant already gone", grant_id=grant_id)
            self.registry.forget(key)
        except Exception:
            self._restore(key, claim)
            raise

    def _restore(self, key: str, claim: Claim) -> None:
        """Put a released claim back so CloudFormation's retry of the Delete finishes it; when the
        object itself was forgotten meanwhile there is nothing left to hold."""
        try:
            self.registry.claim(key, claim)
        except ObjectGone:
            logger.info("object already forgotten; claim not restored", key=key)


def _deletion_status(task_id: str) -> str:
    """A deletion task's status; a task IAM no longer knows finished long ago."""
    from botocore.exceptions import ClientError

    try:
        return iam.deletion_status(task_id)[0]
    except ClientError as error:
        if iam.not_found(error):
            return "SUCCEEDED"
        raise
