"""IAM's policy evaluation, as far as rolekeeper's policies and guardrail use it.

From the IAM User Guide ("Policy evaluation logic", "IAM JSON policy elements: Resource",
"Condition operators"):
- an explicit Deny wins; otherwise some Allow must match, else the request is implicitly denied;
- in Action and Resource, "*" matches any run of characters, "/" included, and "?" any one;
  actions compare case-insensitively, ARNs case-sensitively;
- every condition operator in a statement must hold; a key missing from the request makes a
  positive operator false and a negated one (StringNotEquals, ArnNotLike) true; several policy
  values for one key match if any matches (a negated operator: if none does); an operator
  ending in IfExists holds when the key is missing from the request;
Shared by tests/unit/test_iam_policies.py (the functions' permissions) and
tests/unit/test_guardrail.py (the guardrail's Deny statements).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def glob(pattern: str, *, case: bool = True) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{regex}$", re.DOTALL if case else re.DOTALL | re.IGNORECASE)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda want, have: want == have,
    "StringEqualsIgnoreCase": lambda want, have: want.lower() == have.lower(),
    "StringLike": lambda want, have: bool(glob(want).match(have)),
    "ArnEquals": lambda want, have: want == have,
    "ArnLike": lambda want, have: bool(glob(want).match(have)),
}
NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _operator_holds(operator: str, wanted: Any, context: dict[str, Any], key: str) -> bool:
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    negated = name in NEGATED
    if qualifier not in ("", "ForAnyValue") or (qualifier and negated):
        raise AssertionError(f"operator {operator} not modelled")
    compare = POSITIVE[NEGATED.get(name, name)]
    if key not in context:
        return negated or if_exists
    matched = any(compare(str(w), str(h)) for w in as_list(wanted) for h in as_list(context[key]))
    return not matched if negated else matched


def condition_holds(condition: dict[str, Any], context: dict[str, Any]) -> bool:
    return all(
        _operator_holds(operator, wanted, context, key)
        for operator, checks in condition.items()
        for key, wanted in checks.items()
    )


def statement_applies(statement: dict[str, Any], action: str, resource: str, context: dict[str, Any]) -> bool:
    if not any(glob(a, case=False).match(action) for a in as_list(statement["Action"])):
        return False
    if not any(glob(r).match(resource) for r in as_list(statement["Resource"])):
        return False
    return condition_holds(statement.get("Condition", {}), context)


def evaluate(documents: list[dict[str, Any]], action: str, resource: str, context: dict[str, Any]) -> bool:
    allowed = False
    for document in documents:
        for statement in as_list(document["Statement"]):
            if not statement_applies(statement, action, resource, context):
                continue
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def denied_explicitly(
    documents: list[dict[str, Any]], action: str, resource: str, context: dict[str, Any]
) -> bool:
    """Whether a Deny statement applies (what an SCP or a boundary's Deny does, whatever else allows)."""
    return any(
        statement["Effect"] == "Deny" and statement_applies(statement, action, resource, context)
        for document in documents
        for statement in as_list(document["Statement"])
    )
