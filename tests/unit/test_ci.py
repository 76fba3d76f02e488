"""CI is judged by its last line: it must be pytest's own summary (`==== N passed in Xs ====`)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_ci_run_sends_stderr_to_stdout_before_anything_else() -> None:
    assert _commands(ROOT / ".ci" / "run")[0] == "exec 2>&1"


def test_ci_run_ends_with_the_readme_test_command() -> None:
    assert _commands(ROOT / ".ci" / "run")[-1] == "make test"
    assert "make test" in (ROOT / "README.md").read_text()


def test_pytest_prints_its_summary_between_separators() -> None:
    # -q (and -qq) print `N passed in Xs` without the `====` separators CI looks for.
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    args = shlex.split(options.get("addopts", ""))
    assert not [a for a in args if a in {"-q", "--quiet"} or (a.startswith("-q") and set(a[1:]) == {"q"})]
