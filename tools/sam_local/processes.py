"""The processes a run starts (the Docker daemon, the socket bridges), stopped by process id."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Started:
    """Every process started here, stopped by process id, newest first."""

    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs
            )
        self.processes.append((name, process))
        return process

    def stop_all(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    print(
                        f"sam-local: {name} (pid {process.pid}) ignored SIGTERM; killing it", file=sys.stderr
                    )
                    process.kill()
                    process.wait(timeout=15)
        self.processes.clear()


def wait_until(what: str, ready: Any, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(interval)
    raise SystemExit(f"sam-local: {what} not ready after {timeout:.0f} s")
