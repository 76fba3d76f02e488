from __future__ import annotations


class RolekeeperError(Exception):
    """A request that cannot be carried out. The message is the CloudFormation Reason."""


class InvalidRequest(RolekeeperError):
    """The request's properties are wrong; nothing was created."""


class Conflict(RolekeeperError):
    """AWS holds an object that rolekeeper must not change (for example a role trusting someone else)."""


class Unconfirmed(RolekeeperError):
    """CloudFormation does not confirm the request; nothing was changed."""


class RetryLater(RolekeeperError):
    """Not done yet (a deletion still in progress, a heal under way): the caller comes back later
    (CloudFormation's retry of the stack operation, Lambda's retry of an event)."""


class AnsweredElsewhere(RolekeeperError):
    """The request's answer was decided before this writer's final write (the deadline answered
    FAILED): nothing was written, and what the writer made is undone."""


class ObjectGone(Exception):
    """The object a claim would hold is not (or no longer) registered."""


class Changed(Exception):
    """The object changed since it was read, or is being deleted: read it again and retry."""


class HealInProgress(Exception):
    """The healer holds the object's lease: a Delete waits for it rather than race the heal."""
