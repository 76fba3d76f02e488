"""The embedded AWS: moto, made to behave as AWS (fidelity), with rolekeeper's registry table.

- fast_aws: moto in-process (mock_aws), for a test; cheap enough to run hundreds of times.
- moto_as_is: the same without the fidelity layer (tests that show both behaviours).
- moto_server: a moto server on 127.0.0.1, for whatever reaches AWS over HTTP (make demo, make
  sam-local, the e2e tests).
Each starts rolekeeper on fresh clients and settings (handlers.reset_clients) and leaves it so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tools.devkit import environment, fidelity
from tools.devkit.handlers import reset_clients
from tools.devkit.responses import free_port


@cache
def _session() -> Any:
    import boto3

    return boto3.session.Session()


@cache
def plain(service: str) -> Any:
    """A client of the caller's own for reading AWS back: not rolekeeper's (not faulted, not
    counted). Made once: moto's stub answers any client while a mock is active."""
    return _session().client(service)


def create_registry_table(dynamodb: Any) -> None:
    """The table template.yaml declares, named as the environment says."""
    import os

    from rolekeeper.aws.registry import TABLE_SCHEMA

    dynamodb.create_table(TableName=os.environ["REGISTRY_TABLE_NAME"], **copy.deepcopy(TABLE_SCHEMA))


@contextlib.contextmanager
def moto_as_is() -> Iterator[None]:
    """moto in-process as it is (its own SLR names, EntityAlreadyExists), with the registry table.
    One boto3 session for the whole run: moto resets boto3's default session on start, and each
    new one parses every service model again."""
    import boto3
    from moto import mock_aws

    fidelity.use_only_the_managed_policies_rolekeeper_needs()
    with mock_aws():
        boto3.DEFAULT_SESSION = _session()  # moto puts its own value back on stop
        reset_clients()
        create_registry_table(plain("dynamodb"))
        try:
            yield
        finally:
            reset_clients()


@contextlib.contextmanager
def fast_aws(
    monkeypatch: pytest.MonkeyPatch,
    tasks: fidelity.DeletionTasks | None = None,
    *,
    index_lag: fidelity.IndexLag | None = None,
) -> Iterator[None]:
    """moto in-process, made to behave as AWS, with the registry table. index_lag: for a test that
    makes the table's global secondary indexes lag behind."""
    fidelity.install(
        monkeypatch, tasks if tasks is not None else fidelity.DeletionTasks(), index_lag=index_lag
    )
    with moto_as_is():
        yield


def forget_moto_state() -> None:
    """Empty moto's in-process backends, where a moto server in this process kept its state.
    (BackendDict.reset() would also rebuild IAM's managed policies at once, ~2 s; mock_aws resets
    on its own start anyway.)"""
    from moto.core.base_backend import BackendDict, backend_lock

    with backend_lock:
        for backend in BackendDict._instances:
            backend.clear()


@contextlib.contextmanager
def moto_server(
    *, asynchronous_slr_deletion: bool = False, clock: Any = None, **settings: str
) -> Iterator[fidelity.DeletionTasks]:
    """A moto server on 127.0.0.1, made to behave as AWS, with the registry table; yields its
    service-linked role deletion tasks. os.environ is a local run's (environment.local with
    `settings`) pointing every boto3 client at the server (AWS_ENDPOINT_URL), with
    VERIFY_REQUESTS false: no CloudFormation stands behind these requests (whoever sends them
    plays its part), so there is nothing to confirm them against; LOCAL_RESPONSE_URLS true: the
    answers go to that local stand-in, not to CloudFormation's bucket. The handlers run on `clock`
    (handlers.rebuild_handlers). Afterwards os.environ and moto are as they were, the server's
    state is gone, and rolekeeper starts again on fresh clients."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")  # the server's request log
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    port = free_port()
    tasks = fidelity.DeletionTasks(asynchronous=asynchronous_slr_deletion)
    patcher = pytest.MonkeyPatch()
    try:
        with environment.scoped(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            VERIFY_REQUESTS="false",
            LOCAL_RESPONSE_URLS="true",
            **settings,
        ):
            fidelity.use_only_the_managed_policies_rolekeeper_needs()
            fidelity.install(patcher, tasks)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                reset_clients(clock)
                create_registry_table(boto3.client("dynamodb"))
                yield tasks
            finally:
                server.stop()
                patcher.undo()
    finally:
        reset_clients()
        forget_moto_state()
        werkzeug.setLevel(level)
