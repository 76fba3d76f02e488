"""Trust policies as IAM means them: who a statement lets assume the role, and merging a
blueprint's statement into a role's document without taking away what others added."""

from __future__ import annotations

import json
from typing import Any


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _services(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    return [str(s) for s in as_list(principal.get("Service"))] if isinstance(principal, dict) else []


ASSUME_ACTIONS = ("sts:AssumeRole", "sts:*", "*")


def _assumes(statement: dict[str, Any]) -> bool:
    return any(a in ASSUME_ACTIONS for a in as_list(statement.get("Action")))


def trusts(document: dict[str, Any], principals: tuple[str, ...]) -> bool:
    return any(
        s.get("Effect") == "Allow" and _assumes(s) and set(_services(s)) & set(principals)
        for s in as_list(document.get("Statement"))
    )


def merged_trust(
    current: dict[str, Any] | None, statement: dict[str, Any], principals: tuple[str, ...]
) -> dict[str, Any]:
    """The blueprint's statement is the only one letting its principal assume the role (so its
    conditions hold); everything else others added is kept: Deny statements, other principals,
    and other actions granted to the principal (sts:TagSession, say)."""
    kept: list[dict[str, Any]] = []
    for existing in as_list((current or {}).get("Statement")):
        services = _services(existing)
        if existing.get("Effect") != "Allow" or not _assumes(existing) or not set(services) & set(principals):
            kept.append(existing)
            continue
        rest = [s for s in services if s not in principals]
        principal = {k: v for k, v in existing["Principal"].items() if k != "Service"}
        if rest:
            principal["Service"] = rest if len(rest) > 1 else rest[0]
        if principal:
            kept.append({**existing, "Principal": principal})
        other_actions = [a for a in as_list(existing.get("Action")) if a not in ASSUME_ACTIONS]
        if other_actions:
            ours = [s for s in services if s in principals]
            kept.append(
                {
                    **existing,
                    "Principal": {"Service": ours if len(ours) > 1 else ours[0]},
                    "Action": other_actions if len(other_actions) > 1 else other_actions[0],
                }
            )
    return {"Version": "2012-10-17", "Statement": [*kept, statement]}


def canonical(document: Any) -> Any:
    """Policy documents compared as IAM means them: one-item lists equal their item, order aside."""
    if isinstance(document, dict):
        return {k: canonical(v) for k, v in sorted(document.items()) if k != "Sid" or v}
    if isinstance(document, list):
        items = [canonical(v) for v in document]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return document
