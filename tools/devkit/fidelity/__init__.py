"""Make moto behave as AWS does where rolekeeper depends on the difference.

The AWS facts are written from the AWS documentation, independently of src/ (so a wrong name in
rolekeeper's catalog is caught, not copied); each module states the ones it models:
- iam: service-linked role names, "has been taken", asynchronous service-linked role deletion,
  and the few AWS managed policies moto loads.
- kms: CreateGrant's Name idempotency, 64-hex grant ids, RevokeGrant of an unknown grant.
- dynamodb: TransactWriteItems' ClientRequestToken, and global secondary indexes that lag.

Installed with a pytest.MonkeyPatch (tests pass theirs; tools make one and undo it), on moto's
backends and responses: it holds for moto in-process (mock_aws) and for a moto server in this
process alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.devkit.fidelity.dynamodb import IndexLag, RequestTokens, install_index_lag, install_request_tokens
from tools.devkit.fidelity.iam import (
    AWS_MANAGED_POLICIES_USED,
    AWS_SERVICE_LINKED_ROLE_NAMES,
    DeletionTasks,
    install_authorization_details_pages,
    install_iam,
    use_only_the_managed_policies_rolekeeper_needs,
)
from tools.devkit.fidelity.kms import install_kms

if TYPE_CHECKING:
    import pytest

__all__ = [
    "AWS_MANAGED_POLICIES_USED",
    "AWS_SERVICE_LINKED_ROLE_NAMES",
    "DeletionTasks",
    "IndexLag",
    "RequestTokens",
    "install",
    "use_only_the_managed_policies_rolekeeper_needs",
]


def install(
    monkeypatch: pytest.MonkeyPatch,
    tasks: DeletionTasks,
    tokens: RequestTokens | None = None,
    index_lag: IndexLag | None = None,
) -> None:
    """Every difference at once. index_lag: only a test that makes indexes lag passes one."""
    install_request_tokens(monkeypatch, tokens if tokens is not None else RequestTokens())
    install_index_lag(monkeypatch, index_lag)
    install_iam(monkeypatch, tasks)
    install_authorization_details_pages(monkeypatch)
    install_kms(monkeypatch)
