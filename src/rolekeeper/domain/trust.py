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


def covers(existing: dict[str, Any], statement: dict[str, Any], principals: tuple[str, ...]) -> bool:
    """Whether existing lets the statement's principal (and no other) assume the role under at
    least the statement's conditions (an administrator may have added more: they only narrow it)."""
    principal = existing.get("Principal")
    if existing.get("Effect") != "Allow" or not _assumes(existing) or not isinstance(principal, dict):
        return False
    services = set(_services(existing))
    if (
        set(principal) != {"Service"}
        or services != set(_services(statement))
        or not services <= set(principals)
    ):
        return False
    have = existing.get("Condition") or {}
    return all(
        isinstance(have.get(op), dict) and key in have[op] and canonical(have[op][key]) == canonical(value)
        for op, values in (statement.get("Condition") or {}).items()
        for key, value in values.items()
    )


def merged_trust(
    current: dict[str, Any] | None,
    statement: dict[str, Any],
    principals: tuple[str, ...],
    own: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """The blueprint's statement is the only one letting its principal assume the role (so its
    conditions hold); everything else others added is kept: Deny statements, other principals,
    other actions granted to the principal (sts:TagSession, say), and conditions added to the
    blueprint's statement. own: every statement rolekeeper writes for this blueprint (with and
    without confused-deputy conditions): one of those other than statement is replaced, not kept."""
    statements = as_list((current or {}).get("Statement"))
    replaced = [canonical(s) for s in own if canonical(s) != canonical(statement)]
    covering = [
        i
        for i, s in enumerate(statements)
        if covers(s, statement, principals) and canonical(s) not in replaced
    ]
    # One statement stays: one an administrator narrowed (never drop a condition) before an
    # exact copy of the blueprint's; any other Allow for the principal would undo its conditions.
    narrowed = [i for i in covering if canonical(statements[i]) != canonical(statement)]
    keep = next(iter(narrowed or covering), None)
    kept: list[dict[str, Any]] = []
    for index, existing in enumerate(statements):
        services = _services(existing)
        if index == keep or (
            existing.get("Effect") != "Allow" or not _assumes(existing) or not set(services) & set(principals)
        ):
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
    return {"Version": "2012-10-17", "Statement": kept if keep is not None else [*kept, statement]}


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
