from __future__ import annotations


class RolekeeperError(Exception):
    """A request that cannot be carried out. The message is the CloudFormation Reason."""


class InvalidRequest(RolekeeperError):
    """The request's properties are wrong; nothing was created."""


class Conflict(RolekeeperError):
    """AWS holds an object that rolekeeper must not change (for example a role trusting someone else)."""


class ObjectGone(Exception):
    """The object a claim would hold is not (or no longer) registered."""


class Changed(Exception):
    """The object changed since it was read, or is being deleted: read it again and retry."""


class HealInProgress(Exception):
    """The healer holds the object's lease: a Delete waits for it rather than race the heal."""
