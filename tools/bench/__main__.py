"""make bench: prints the date and machine, one markdown table, notes, and every measured
operation's calls in order. `python -m tools.bench [section ...]` runs only those sections
(requests, cold-start, latency, burst, reconcile, memory)."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from tools.bench.report import Table

SECTIONS = ("cold-start", "requests", "latency", "burst", "reconcile", "memory")


def main(argv: list[str]) -> int:
    from tools.bench.burst import heal_burst
    from tools.bench.cold_start import cold_start
    from tools.bench.inprocess import Calls
    from tools.bench.latency import delete_latency
    from tools.bench.memory import memory
    from tools.bench.reconcile import reconcile
    from tools.bench.requests import call_counts

    wanted = argv or list(SECTIONS)
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    table = Table()
    calls = Calls()
    run = {
        "cold-start": lambda: cold_start(table),
        "requests": lambda: call_counts(table, calls),
        "latency": lambda: delete_latency(table, calls),
        "burst": lambda: heal_burst(table, calls),
        "reconcile": lambda: reconcile(table),
        "memory": lambda: memory(table),
    }
    for section in SECTIONS:
        if section in wanted:
            try:
                run[section]()
            except Exception:  # one section's failure must not lose the others' rows
                table.add(f"Section `{section}`", "failed (traceback above)", "-", "-", "-", "MISS")
                traceback.print_exc()
    cpu = platform.processor() or platform.machine()
    print(f"rolekeeper bench, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()} ({sys.executable})\n"
    )
    print(table.render())
    print("\nNotes:")
    print(
        "- AWS is moto: latencies exclude real AWS round trips (~20-100 ms per IAM call); call counts are exact."
    )
    for note in table.notes:
        print(f"- {note}")
    if table.calls:
        print("- Calls made, in order:")
        for line in table.calls:
            print(f"  - {line}")
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    peak = int(status["VmHWM"].split()[0]) / 1024 if "VmHWM" in status else float("nan")
    print(
        f"\n(bench took {time.perf_counter() - began:.0f} s; the bench process's own peak RSS: {peak:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
