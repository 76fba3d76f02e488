from __future__ import annotations


class RolekeeperError(Exception):
    """A request that cannot be carried out. The message is the CloudFormation Reason."""


class InvalidRequest(RolekeeperError):
    """The request's properties are wrong; nothing was created."""


class Conflict(RolekeeperError):
    """AWS holds an object that rolekeeper must not change (for example a role trusting someone else)."""
