"""KMS as AWS documents it, where moto differs:
- CreateGrant with a Name and identical parameters returns the existing GrantId (new token).
- Grant ids are 64 hex characters.
- RevokeGrant of a grant the key does not have fails with NotFoundException.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from moto.kms import models as kms_models


def install_kms(monkeypatch: pytest.MonkeyPatch) -> None:
    original_grant = kms_models.KmsBackend.create_grant

    def create_grant(
        self: Any,
        key_id: str,
        grantee_principal: str,
        operations: list[str],
        name: str,
        constraints: dict[str, Any],
        retiring_principal: str,
    ) -> tuple[str, str]:
        key = self.describe_key(key_id)
        if name:
            for grant in key.grants.values():
                if (
                    grant.name,
                    grant.grantee_principal,
                    sorted(grant.operations),
                    grant.constraints,
                    grant.retiring_principal,
                ) == (
                    name,
                    grantee_principal,
                    sorted(operations),
                    constraints,
                    retiring_principal,
                ):
                    return grant.id, secrets.token_hex(32)
        grant_id, token = original_grant(
            self, key_id, grantee_principal, operations, name, constraints, retiring_principal
        )
        grant = key.grants.pop(grant_id)
        grant.id = secrets.token_hex(32)
        key.grants[grant.id] = grant
        return grant.id, token

    def revoke_grant(self: Any, key_id: str, grant_id: str) -> None:
        key = self.describe_key(key_id)
        if grant_id not in key.grants:
            from moto.kms.exceptions import NotFoundException

            raise NotFoundException(f"Grant ID {grant_id} not found")
        del key.grants[grant_id]

    monkeypatch.setattr(kms_models.KmsBackend, "create_grant", create_grant)
    monkeypatch.setattr(kms_models.KmsBackend, "revoke_grant", revoke_grant)
