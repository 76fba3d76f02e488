"""Shared by the unit tests: every line the service logs, wherever Powertools sends it."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """All log output of the test: Powertools' JSON lines (stdout) and the records with extras."""
    import rolekeeper.observability  # noqa: F401 - makes the service logger and its handler

    caplog.set_level(logging.DEBUG, logger="rolekeeper")
    streams = [h for h in logging.getLogger("rolekeeper").handlers if isinstance(h, logging.StreamHandler)]
    before = [h.stream for h in streams]
    for handler in streams:
        _point(handler, sys.stdout)

    def text() -> str:
        out = capsys.readouterr()
        records = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
        return f"{out.out}\n{out.err}\n{records}"

    try:
        yield text
    finally:
        for handler, stream in zip(streams, before, strict=True):
            # The handler may have been made under an earlier test's capture, since closed.
            _point(handler, sys.__stdout__ if getattr(stream, "closed", False) else stream)


def _point(handler: logging.StreamHandler[Any], stream: Any) -> None:
    with handler.lock or threading.RLock():
        handler.stream = stream
