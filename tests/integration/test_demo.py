"""`make demo`: every step names what it changed in AWS and the registry, and the run ends with
what to do next. The demo runs as `make demo` runs it (tools.demo.run.main on the embedded moto
server); its snapshots of AWS are recorded as it takes them and each step's printed lines are
checked against the difference between the snapshot before and the one after."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.demo import run as demo

ROOT = Path(__file__).resolve().parents[2]
STEP = re.compile(r"^(\d+)\. ")


@pytest.fixture
def isolated() -> Iterator[None]:
    """The demo points os.environ at its own moto server (tools.devkit.embedded.moto_server), which
    puts it back, with moto's state and rolekeeper's clients, when the demo ends."""

    def environ() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}

    saved = environ()
    yield
    assert environ() == saved, "the demo left os.environ changed"


def _sections(text: str) -> dict[int, list[str]]:
    """Each numbered step's lines, up to the next step or the closing lines."""
    sections: dict[int, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = STEP.match(line)
        if match:
            current = sections.setdefault(int(match.group(1)), [])
        elif line.startswith("demo finished"):
            current = None
        if current is not None:
            current.append(line)
    return sections


def _named(fact: tuple[str, str], values: dict[str, str], lines: list[str]) -> bool:
    """Some line of the step names the object and each of the values that describe it."""
    _category, name = fact
    return any(name in line and all(v in line for v in values.values()) for line in lines)


def test_demo_names_each_change_and_ends_with_the_next_step(
    isolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[dict[tuple[str, str], dict[str, str]]] = []
    real_snapshot = demo.snapshot

    def recorded(*args: Any) -> dict[tuple[str, str], dict[str, str]]:
        facts = real_snapshot(*args)
        taken.append(facts)
        return facts

    monkeypatch.setattr(demo, "snapshot", recorded)
    out = io.StringIO()
    assert demo.main(out) == 0
    text = out.getvalue()

    sections = _sections(text)
    assert sorted(sections) == list(range(1, len(taken)))
    for number, lines in sections.items():
        before, after = taken[number - 1], taken[number]
        appeared = after.keys() - before.keys()
        went = before.keys() - after.keys()
        changed = {k for k in before.keys() & after.keys() if before[k] != after[k]}
        assert appeared or went or changed, f"step {number} changed nothing in AWS or the registry"
        for fact in appeared:
            assert _named(fact, after[fact], lines), (number, fact, after[fact])
        for fact in went:
            assert _named(fact, {}, lines), (number, fact)
        for fact in changed:
            moved = {k: v for k, v in after[fact].items() if before[fact].get(k) != v}
            assert _named(fact, moved, lines), (number, fact, moved)

    # The story the steps tell, in AWS's own terms: the heal gave the Spot Fleet role a new
    # RoleId and replaced its grant; at the end only the adopted role is left.
    healed = next(n for n, lines in sections.items() if any("healer:" in line for line in lines))
    role = ("role", demo.SPOT_FLEET)
    assert taken[healed][role]["RoleId"] != taken[healed - 2][role]["RoleId"]
    grants = [{k for k in taken[n] if k[0] == "grant"} for n in (healed - 1, healed)]
    assert grants[0] and grants[1] and not grants[0] & grants[1]
    assert {k for k in taken[-1] if k[0] == "role"} == {("role", "AWSBatchServiceRole")}

    assert "retired" not in text  # rolekeeper revokes grants (RevokeGrant); it never retires them
    assert len(text.splitlines()) < 180, "a diff per step, not a dump of AWS"
    closing = text.rstrip().splitlines()[-5:]
    assert any("sam deploy" in line for line in closing)
    pages = [p for line in closing for p in re.findall(r"[\w./-]+\.md", line)]
    assert pages and all((ROOT / page).is_file() for page in pages)
