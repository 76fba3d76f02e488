"""The plan `make sam-local` runs (plan.toml): which event goes to which function in which order,
what each must answer, and the values an event gets at run time."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from tools.devkit.events import EVENTS, ROOT

PLAN = Path(__file__).with_name("plan.toml")

__all__ = ["EVENTS", "PLAN", "ROOT", "fill", "function_for", "load_plan", "prepared_event"]


def load_plan() -> dict[str, Any]:
    plan = tomllib.loads(PLAN.read_text())
    named = [step["event"] for step in plan["step"]] + list(plan.get("not_in_container", {}))
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    missing = sorted(set(files) - set(named))
    unknown = sorted(set(named) - set(files))
    if missing or unknown:
        raise SystemExit(
            f"sam-local: {PLAN.name} must name every file in events/ exactly: missing {missing}, unknown {unknown}"
        )
    return plan


def function_for(event: dict[str, Any]) -> str:
    return "ProvisionerFunction" if "RequestType" in event else "HealerFunction"


def fill(template: str, facts: dict[str, str], strict: bool = True) -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in facts:
            if not strict:
                return match.group(0)
            raise SystemExit(f"sam-local: no fact {{{key}}} known yet (plan order?)")
        return facts[key]

    return re.sub(r"\{([a-z_]+)\}", one, template)


def prepared_event(
    step: dict[str, Any], plan: dict[str, Any], facts: dict[str, str], strict: bool = True
) -> dict[str, Any]:
    """The event file with the run-time values put in (step substitutions first)."""
    text = (EVENTS / step["event"]).read_text()
    for literal, value in {**step.get("substitute", {}), **plan.get("substitute", {})}.items():
        if literal in text:
            text = text.replace(literal, fill(value, facts, strict))
    event: dict[str, Any] = json.loads(text)
    return event
