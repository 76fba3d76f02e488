"""The scheduled reconcile of 10,000 registered roles (IAM pages of 1,000): calls per service,
DynamoDB reads against N/1000, peak memory and time of one whole run; then a cycle of runs each
cut short by its deadline, resumed by the next, until every object was checked.

Each run is a fresh process (tools/bench/reconcile_child.py) invoking the healer's handler as
Lambda would, against this process's embedded AWS over HTTP, so its memory is rolekeeper's alone.
A run whose time is up is killed, as Lambda ends an invocation at its timeout."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tools.bench import ROOT
from tools.bench.cold_start import subprocess_env
from tools.bench.inprocess import SSM_POLICY, request, reset_moto
from tools.bench.report import Table, quiet, verdict
from tools.bench.seeding import index_instance_profiles, plain_scan_responses, seed

# BENCH_RECONCILE_SIZE: a smaller registry while working on the bench itself.
SIZE = int(os.environ.get("BENCH_RECONCILE_SIZE", "10000"))
IAM_PAGE = 1_000
FULL_MS = 300_000  # template.yaml: HealerFunction Timeout 300
MAX_RUNS = 8  # of the cut-short cycle
MEMORY_TARGET_MB = 128
# A cut-short run gets this share of a whole run's time, plus the handler's margin before Lambda's
# deadline (main before the cursor kept none). A whole run spends about half its time on the IAM
# pages, so each cut-short run checks about a third of the objects.
CUT_SHARE = 0.7
# ... but at least this many times what the whole run spent on the IAM pages: a run must get past
# them to check anything, and their time varies from run to run (a whole run of 14 s left its cut
# runs 10 s, less than the pages took them, and 8 runs checked nothing).
IAM_HEADROOM = 1.5


@dataclass
class Run:
    answer: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    calls: list[tuple[str, str, float]] = field(default_factory=list)  # (service, operation, at s)
    elapsed: float = 0.0
    traced_peak: int = 0
    rss_kb: int = 0
    killed: bool = False

    def count(self, service: str, operation: str | None = None) -> int:
        return sum(1 for s, op, _at in self.calls if s == service and operation in (None, op))

    @property
    def checked(self) -> int:
        if "checked" in self.answer:
            return int(self.answer["checked"])
        outcomes = ("healed", "healthy", "ignored", "reported", "suppressed", "coalesced", "in-use", "failed")
        return sum(int(self.answer.get(o, 0)) for o in outcomes)

    @property
    def complete(self) -> bool:
        """This run reached the end of the registry (main before the cursor: any run that finished)."""
        return not self.killed and not self.error and bool(self.answer.get("complete", True))


def run_child(endpoint: str, remaining_ms: int, mode: str = "rss") -> Run:
    env = subprocess_env()
    kill_after = remaining_ms / 1000 + 2
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tools.bench.reconcile_child", endpoint, str(remaining_ms), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=kill_after,
            check=False,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return Run(killed=True, elapsed=kill_after)
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        return Run(error=f"no result (exit {out.returncode}): {out.stderr[-600:]}")
    data = json.loads(line[len("RESULT ") :])
    data["calls"] = [tuple(c) for c in data["calls"]]
    return Run(**data)


def _register(name: str) -> None:
    from rolekeeper.handlers import custom_resource
    from tools.bench.inprocess import Context

    answers: list[dict[str, Any]] = []
    custom_resource.configure(sender=lambda _url, answer, _clock: answers.append(answer) or 200)
    event = request(
        "role-ec2-application-create.json",
        "bench",
        {
            "RoleName": name,
            "ManagedPolicyArns": [SSM_POLICY],
            "Tags": [{"Key": "team", "Value": "bench"}],
            "OnDelete": "Delete",
        },
        LogicalResourceId="AppRole",
        ResponseURL="http://127.0.0.1:9/unused",
        RequestId=str(uuid.uuid4()),
    )
    with quiet():
        custom_resource.lambda_handler(event, Context())
    custom_resource.configure()
    assert answers and answers[-1]["Status"] == "SUCCESS", answers


def measure() -> dict[str, Any]:
    """Seeds SIZE roles, runs one whole reconcile (twice: RSS, then tracemalloc) and a cut-short
    cycle. Returns what the table shows."""
    import pytest

    from tools.devkit.embedded import moto_server as embedded_aws

    saved = dict(os.environ)
    patcher = pytest.MonkeyPatch()
    try:
        with embedded_aws(
            REGISTRY_TABLE_NAME=os.environ["REGISTRY_TABLE_NAME"],
            ALLOWED_TAG_KEYS=os.environ["ALLOWED_TAG_KEYS"],
            POWERTOOLS_LOG_LEVEL="ERROR",
        ):
            index_instance_profiles(patcher)
            plain_scan_responses(patcher)
            endpoint = os.environ["AWS_ENDPOINT_URL"]
            began = time.perf_counter()
            seed(SIZE, _register)
            seeded = time.perf_counter() - began
            whole = run_child(endpoint, FULL_MS)
            traced = run_child(endpoint, FULL_MS, "trace")
            margin = _margin()
            budget_ms = int((margin + cut_work(whole)) * 1000)
            cycle: list[Run] = []
            for _ in range(MAX_RUNS):
                cycle.append(run_child(endpoint, budget_ms))
                if cycle[-1].complete:
                    break
    finally:
        patcher.undo()
        reset_moto()
        os.environ.clear()
        os.environ.update(saved)
    return {"seeded": seeded, "whole": whole, "traced": traced, "budget_ms": budget_ms, "cycle": cycle}


def iam_pages_time(run: Run) -> float:
    """Seconds from the run's start until it was done with the IAM pages (its first call after
    the last page was made)."""
    last = max((at for s, op, at in run.calls if op == "GetAccountAuthorizationDetails"), default=0.0)
    return min((at for _s, _op, at in run.calls if at > last), default=last)


def cut_work(whole: Run) -> float:
    """The work time a cut-short run gets (seconds, before the handler's margin)."""
    return max(CUT_SHARE * whole.elapsed, IAM_HEADROOM * iam_pages_time(whole))


def _margin() -> float:
    """The healer handler's margin before Lambda's deadline (0 where it keeps none)."""
    from rolekeeper.handlers import healer

    return float(getattr(healer, "TIMEOUT_MARGIN", 0.0))


def reconcile(table: Table) -> dict[str, Any]:
    found = measure()
    whole: Run = found["whole"]
    traced: Run = found["traced"]
    pages = whole.count("iam", "GetAccountAuthorizationDetails")
    scans = whole.count("dynamodb", "Scan")
    db = whole.count("dynamodb")
    db_reads = sum(1 for s, op, _at in whole.calls if s == "dynamodb" and op in ("Scan", "Query", "GetItem"))
    expected_pages = math.ceil(SIZE / IAM_PAGE)
    per_thousand = math.ceil(SIZE / 1000)
    by_service = Counter(s for s, _op, _at in whole.calls)
    others = sorted(
        Counter(
            op for _s, op, _at in whole.calls if op not in ("GetAccountAuthorizationDetails", "Scan")
        ).items()
    )
    table.add(
        f"Scheduled reconcile: {SIZE:,} registered roles, one whole run",
        f"IAM {by_service['iam']} (GetAccountAuthorizationDetails pages {pages}) / KMS {by_service['kms']} / "
        f"DynamoDB {db} (Scan pages {scans}, reads {db_reads}); {whole.elapsed:.1f} s; "
        f"checked {whole.checked}{'; ' + whole.error[:80] if whole.error else ''}",
        f"IAM pages of {IAM_PAGE:,}: {expected_pages}; DynamoDB reads about N/1000 = {per_thousand:.0f}",
        f"IAM {by_service['iam'] / expected_pages:.1f}x pages; DynamoDB reads {db_reads / per_thousand:.1f}x N/1000",
        "IAM = pages of 1,000; DynamoDB reads <= 2x N/1000; every object checked",
        verdict(
            by_service["iam"] == pages == expected_pages
            and db_reads <= 2 * per_thousand
            and whole.checked == SIZE
            and not whole.error
        ),
    )
    table.calls.append(f"Scheduled reconcile, whole run, calls other than the pages: {others}")
    rss_mb = whole.rss_kb / 1024
    table.add(
        f"Scheduled reconcile: {SIZE:,} roles, peak memory of the run's process",
        f"peak RSS (VmHWM) {rss_mb:.0f} MB; tracemalloc peak {traced.traced_peak / 2**20:.1f} MB "
        "(Python heap during the invocation)",
        f"{MEMORY_TARGET_MB} MB",
        f"{rss_mb / MEMORY_TARGET_MB:.0%} of {MEMORY_TARGET_MB} MB",
        f"< {MEMORY_TARGET_MB} MB",
        verdict(0 < rss_mb < MEMORY_TARGET_MB),
    )
    cycle: list[Run] = found["cycle"]
    budget = found["budget_ms"] / 1000
    done = bool(cycle) and cycle[-1].complete
    shown = ", ".join("killed at its timeout" if r.killed else f"{r.checked}" for r in cycle)
    stopped = sum(1 for r in cycle if not r.killed and not r.complete)
    table.add(
        f"Scheduled reconcile: {SIZE:,} roles, each run given {budget:.0f} s (the larger of {CUT_SHARE:.0%} "
        f"of a whole run and {IAM_HEADROOM}x its IAM pages' {iam_pages_time(whole):.0f} s, + the handler's "
        f"{_margin():.0f} s margin), until every object was checked",
        f"{len(cycle)} run(s){'' if done else ' and not done'}: checked per run {shown}; "
        f"{stopped} stopped early before the deadline",
        f"{SIZE:,} objects; a whole run takes {whole.elapsed:.0f} s",
        f"checked in all {sum(r.checked for r in cycle):,}",
        "every object checked within a bounded number of runs; no run killed",
        verdict(done and sum(r.checked for r in cycle) >= SIZE and not any(r.killed for r in cycle)),
    )
    table.notes.append(
        f"Reconcile: {SIZE:,} ec2-application roles (a policy, an instance profile and a tag each), "
        f"seeded in {found['seeded']:.0f} s; each run a fresh process against the embedded moto server "
        "(HTTP), so times include moto's own work (its Scan sorts the whole table per page)."
    )
    return found
