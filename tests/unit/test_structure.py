"""The layout issue 15 asked for, checked on the source: no import cycle (imports inside functions
count too), imports only point down the layers, only the AWS adapters import the SDK, and only
the settings module reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "rolekeeper"
# Lower layers never import higher ones (docs/design-notes.md, "Layout and settings").
LAYERS = ["domain", "aws", "convergence", "provisioning", "healing", "handlers"]
# The operator's CLI (not a Lambda function) takes the table name from the shell's environment.
READS_ENVIRONMENT = {"rolekeeper.config", "rolekeeper.cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Every module imported anywhere in the tree (functions included), `from a import b`
    counting as a.b when that is a module."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {
        name: {m for m in imports(tree, known) if m in known and m != name} for name, tree in trees.items()
    }


def test_no_module_imports_itself_back_through_others():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_imports_only_point_down_the_layers():
    upward = [
        (name, target)
        for name, targets in graph().items()
        for target in targets
        if layer(name) is not None and layer(target) is not None and layer(target) > layer(name)  # type: ignore[operator]
    ]
    assert upward == []


def test_only_the_aws_adapters_import_the_sdk():
    known = set(modules())
    outside = sorted(
        name
        for name, tree in modules().items()
        if not name.startswith("rolekeeper.aws")
        and any(m.split(".")[0] in ("boto3", "botocore") for m in imports(tree, known))
    )
    assert outside == []


def test_only_the_settings_module_reads_the_environment():
    readers = sorted(
        name
        for name, tree in modules().items()
        if any(
            isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") for node in ast.walk(tree)
        )
    )
    assert set(readers) <= READS_ENVIRONMENT, readers
