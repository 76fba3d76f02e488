"""What every provisioning step works with: the deployer's settings, the registry, the clock
(bounded by the request's deadline), and the request's answer, written with its last write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rolekeeper.aws.registry import Registry
from rolekeeper.aws.registry.table import Write
from rolekeeper.config import Settings
from rolekeeper.provisioning.requests import Response
from rolekeeper.retry import Clock


@dataclass(frozen=True)
class Context:
    settings: Settings
    registry: Registry
    clock: Clock
    # The items that join a request's last registry write (its answer), given the response.
    answer: Callable[[Response], Sequence[Write]] = field(default=lambda _response: ())
