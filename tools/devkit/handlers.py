"""Both handlers rebuilt, as a new execution environment would build them, after the settings,
the AWS endpoint or the clock changed."""

from __future__ import annotations

from typing import Any

from tools.devkit.clock import CLOCK


def rebuild_handlers(clock: Any = None) -> None:
    """Both handlers rebuilt on next use from the settings as the environment says now, on
    `clock` (a rolekeeper.retry.Clock; default: the current fake clock, CLOCK[0]). What else was
    configured (a test's sender) stays."""
    from rolekeeper.config import settings
    from rolekeeper.handlers import custom_resource, healer

    settings.cache_clear()
    custom_resource.configure(clock=clock or CLOCK[0].clock())
    healer.configure(clock=clock or CLOCK[0].clock())


def reset_clients(clock: Any = None) -> None:
    """Fresh AWS clients (made on next use, against the environment's endpoint) and settings;
    both handlers rebuilt on them, on `clock` as in rebuild_handlers."""
    from rolekeeper.aws import clients as aws

    aws.client.cache_clear()
    rebuild_handlers(clock)
