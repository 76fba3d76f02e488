"""tools/sam_local/plan.toml, the plan `make sam-local` runs, stays in step with events/ and the template
(without Docker: the invokes themselves run in `make sam-local`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import sam_local


def test_plan_names_every_event_file_once() -> None:
    plan = sam_local.load_plan()
    named = [step["event"] for step in plan["step"]] + list(plan.get("not_in_container", {}))
    assert len(named) == len(set(named))
    assert sorted(named) == sorted(p.name for p in sam_local.EVENTS.glob("*.json"))


def test_each_substitution_finds_its_literal_in_the_event() -> None:
    plan = sam_local.load_plan()
    for step in plan["step"]:
        text = (sam_local.EVENTS / step["event"]).read_text()
        for literal in step.get("substitute", {}):
            assert literal in text, f"{step['event']}: {literal} not found; update {sam_local.PLAN.name}"


def test_steps_expect_what_their_function_returns() -> None:
    plan = sam_local.load_plan()
    for step in plan["step"]:
        event = json.loads((sam_local.EVENTS / step["event"]).read_text())
        if sam_local.function_for(event) == "ProvisionerFunction":
            assert step.get("status") in ("SUCCESS", "FAILED"), step
        else:
            assert "outcome" in step, step
            assert step.get("state", "restored") in ("restored", "restored_keeping_additions", "unchanged")


def test_prepared_event_puts_in_run_time_values() -> None:
    plan = sam_local.load_plan()
    step = next(s for s in plan["step"] if s["event"] == "grant-update.json")
    facts = {
        "account": plan["function_account"],
        "key_arn": "arn:aws:kms:us-east-1:0:key/k",
        "grant_id": "g1",
    }
    event = sam_local.prepared_event(step, plan, facts)
    assert event["PhysicalResourceId"] == "arn:aws:kms:us-east-1:0:key/k#g1"
    assert event["ResourceProperties"]["KeyId"] == "arn:aws:kms:us-east-1:0:key/k"
    assert plan["function_account"] in event["StackId"]
    with pytest.raises(SystemExit, match="replaced_grant_id"):
        sam_local.prepared_event(
            next(s for s in plan["step"] if s["event"] == "grant-delete.json"), plan, facts
        )


def test_local_template_is_the_template_on_x86_64(tmp_path: Path) -> None:
    out = tmp_path / "template.yaml"
    sam_local.write_template(out)
    local = out.read_text()
    original = (sam_local.ROOT / "template.yaml").read_text()
    assert "Architectures: [x86_64]" in local
    assert (
        local.splitlines()[1:]
        == original.replace("Architectures: [arm64]", "Architectures: [x86_64]").splitlines()
    )
