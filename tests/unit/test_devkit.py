"""tools/devkit, the development kit tests and tools share, stays outside what ships: the Lambda
artifact is src/ and rolekeeper imports nothing from tools/ or tests/; and the settings a local run
sets are ones the template gives the functions."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tools.devkit import environment
from tools.devkit.events import ROOT
from tools.policies import Loader

SRC = ROOT / "src" / "rolekeeper"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_devkit_rolekeeper_imports_nothing_from_tools_or_tests() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in SRC.rglob("*.py")
        for name in _imported(path)
        if name.split(".")[0] in ("tools", "tests")
    }
    assert not found


def test_devkit_is_not_in_the_functions_code() -> None:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)  # noqa: S506
    functions = {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert functions
    code = {
        name: resource["Properties"].get("CodeUri", template["Globals"]["Function"]["CodeUri"])
        for name, resource in functions.items()
    }
    assert set(code.values()) == {"src/"}, code


def test_devkit_sets_only_variables_the_template_gives_the_functions() -> None:
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)  # noqa: S506
    declared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    assert set(environment.SETTINGS) <= declared, set(environment.SETTINGS) - declared
