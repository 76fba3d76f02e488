"""The dependencies are locked (uv.lock, hashes), the lock is what pyproject.toml asks for, and the
dev venv and the Lambda artifact install from it; the tests run on the functions' runtime."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    if not UV.exists():
        pytest.fail(f"{UV} missing: `make dev` installs uv from the lock")
    # Offline: the lock is checked against pyproject.toml, nothing is fetched.
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    return subprocess.run(
        [str(UV), *args, "--python", sys.executable],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _normalized(requirement: Requirement, extra: str | None) -> tuple[str, tuple[str, ...], str, str]:
    marker = f"extra == '{extra}'" if extra else ""
    return (
        canonicalize_name(requirement.name),
        tuple(sorted(requirement.extras)),
        str(requirement.specifier),
        marker,
    )


def _asked() -> set[tuple[str, tuple[str, ...], str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    asked = {_normalized(Requirement(r), None) for r in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        asked |= {_normalized(Requirement(r), extra) for r in requirements}
    return asked


def _locked_project() -> dict[str, Any]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (project,) = [p for p in lock["package"] if p["name"] == "rolekeeper"]
    return project


def _recorded() -> set[tuple[str, tuple[str, ...], str, str]]:
    recorded = set()
    for entry in _locked_project()["metadata"]["requires-dist"]:
        specifier = str(Requirement(f"x{entry.get('specifier', '')}").specifier)
        marker = entry.get("marker", "").replace('"', "'")
        recorded.add(
            (canonicalize_name(entry["name"]), tuple(sorted(entry.get("extras", []))), specifier, marker)
        )
    return recorded


def test_lock_records_exactly_what_pyproject_asks_for():
    asked, recorded = _asked(), _recorded()
    assert asked == recorded, (
        f"pyproject.toml and uv.lock disagree; run `make lock`. Only in pyproject.toml: "
        f"{sorted(asked - recorded)}; only in uv.lock: {sorted(recorded - asked)}"
    )


def test_uv_finds_the_lock_current():
    result = _uv("lock", "--check")
    assert result.returncode == 0, f"`uv lock --check`: {result.stderr.strip()}; run `make lock`"


def _pins(text: str) -> list[str]:
    """The requirement lines of a pip requirements file, continuation lines joined, no comments."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.parametrize(
    ("path", "extra"), [("src/requirements.txt", []), ("requirements-dev.txt", ["--extra", "dev"])]
)
def test_exported_requirements_are_the_lock(path: str, extra: list[str]):
    result = _uv("export", "--frozen", "--no-emit-project", *extra)
    assert result.returncode == 0, result.stderr
    assert _pins((ROOT / path).read_text()) == _pins(result.stdout), (
        f"{path} is not uv.lock's export: `make lock`"
    )


def test_lambda_artifact_pins_every_package_with_hashes():
    pins = _pins((ROOT / "src" / "requirements.txt").read_text())
    names = set()
    for pin in pins:
        requirement, *hashes = pin.split(" --hash=")
        parsed = Requirement(requirement)
        assert re.fullmatch(r"==[\w.+!-]+", str(parsed.specifier)), pin
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), pin
        names.add(canonicalize_name(parsed.name))
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {canonicalize_name(Requirement(r).name) for r in runtime} <= names
    # The development tools stay out of the function's zip.
    assert not names & {"moto", "pytest", "mypy", "ruff", "uv", "setuptools", "hypothesis"}


def test_tests_run_on_the_functions_runtime():
    # `make test` runs in the venv `make dev` makes, on the Python the functions run (python3.13).
    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)  # noqa: S506
    runtime = template["Globals"]["Function"]["Runtime"]
    assert runtime == f"python{sys.version_info.major}.{sys.version_info.minor}", (runtime, sys.version)


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Without what an outer `make test` passes down (its variables would override ours).
    base = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON313"}}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_dev_installs_only_the_hashed_lock_on_python_3_13():
    result = _make("-n", "-B", "dev")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.splitlines()
    (venv,) = [c for c in commands if " -m venv " in c]
    python = venv.split(" -m venv ")[0].strip()
    version = subprocess.run([python, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.startswith("Python 3.13"), version.stdout
    installs = [c for c in commands if " pip install " in c]
    assert installs[0].endswith("--require-hashes -r requirements-dev.txt"), installs
    # The project itself: no dependency resolution, no build isolation (setuptools is locked).
    assert all("--no-deps" in c and "--no-build-isolation" in c for c in installs[1:]), installs


def test_make_dev_without_python_3_13_says_how_to_get_it(tmp_path: Path):
    # No python3.13 on PATH (only the system's tools) and no pyenv under HOME.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "bash", "sh", "sed"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = _make("-n", "-B", "dev", env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "Python 3.13" in line and "pyenv install 3.13" in line and "PYTHON313=" in line, line
