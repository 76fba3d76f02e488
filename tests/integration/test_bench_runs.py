"""make bench is not a test (speed is measured, not asserted), but it must keep running: a section
that fails prints a MISS row nobody reads until the next measurement (the memory section failed so
after the devkit merge). Runs the quick sections in a fresh process and checks they all ran, and
that every custom resource request stays within one AWS call of the minimum its semantics allow
(issue 15; tools/bench/minimums.py argues each minimum). Call counts are exact under the embedded
AWS, so this is behaviour, not a timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_bench_sections_run_to_the_end():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for name in [n for n in env if n.startswith("AWS_") or n in ("REGISTRY_TABLE_NAME",)]:
        env.pop(name)  # the bench sets up its own embedded AWS
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench", "requests", "memory"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "failed (traceback above)" not in out, out[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| AWS calls: ")]
    assert len(rows) >= 28, out[-3000:]  # every request type and heal measured
    assert any(line.startswith("| Peak memory: one SLR create") for line in done.stdout.splitlines())
    requests = [row for row in rows if not row.startswith("| AWS calls: Heal:")]
    over = [row.split("|")[1].strip() + ": " + row.split("|")[-2].strip() for row in requests]
    assert len(requests) >= 21 and all(o.endswith(": PASS") for o in over), "\n".join(
        o for o in over if not o.endswith(": PASS")
    )
