"""A Docker daemon of the run's own (socket, state and exec dirs) and the base image in it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.sam_local.processes import Started, wait_until

DOCKERD_START = 90.0  # seconds for the daemon to answer


@dataclass
class Docker:
    host: str  # unix:///.../docker.sock

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "--host", self.host, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def answers(self) -> bool:
        try:
            return self.run("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_image(self, rootfs: Path) -> str:
        digest = hashlib.sha256(rootfs.name.encode()).hexdigest()[:12]
        # SAM names its rapid image after the base image's repository: a new repository per base image.
        image = f"rolekeeper-lambda-python-{digest}:3.13"
        if self.run("image", "inspect", image, check=False).returncode == 0:
            return image
        changes = [
            "ENV LAMBDA_TASK_ROOT=/var/task",
            "ENV LAMBDA_RUNTIME_DIR=/var/runtime",
            "ENV LANG=C.UTF-8",
            "ENV TZ=:/etc/localtime",
            "ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin",
            "WORKDIR /var/task",
        ]
        argv = ["import"]
        for change in changes:
            argv += ["--change", change]
        self.run(*argv, str(rootfs), image)
        return image


@contextlib.contextmanager
def docker_daemon(started: Started, cache: Path, state: Path) -> Iterator[Docker]:
    """dockerd in this network namespace: its own socket and exec dir under `state` (short path),
    images kept in `cache` so a second run reuses the base and SAM's rapid image."""
    data_root = cache / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    lock = (cache / "docker.lock").open("w")
    deadline = time.monotonic() + 900
    while True:  # one daemon per data root: wait (bounded) for another run to finish
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit(f"sam-local: {data_root} stayed in use by another run") from None
            time.sleep(2)
    docker = Docker(host=f"unix://{state}/docker.sock")
    started.start(
        "dockerd",
        [
            "dockerd",
            "--host",
            docker.host,
            "--data-root",
            str(data_root),
            "--exec-root",
            str(state / "exec"),
            "--pidfile",
            str(state / "docker.pid"),
            "--ip",
            "127.0.0.1",
        ],
        state / "dockerd.log",
    )
    try:
        wait_until("dockerd", docker.answers, DOCKERD_START)
        yield docker
    finally:
        # SAM removes its containers; anything left (an interrupted invoke) goes with the daemon.
        with contextlib.suppress(Exception):
            left = docker.run("ps", "-aq", check=False, timeout=30).stdout.split()
            if left:
                docker.run("rm", "-f", *left, check=False, timeout=120)
        lock.close()
