"""Moved to tools/devkit/fidelity, the development kit tests and tools share. Only tools/bench.py
still imports this name (it is being made a package by another change): delete this module once
it imports tools.devkit.fidelity."""

from tools.devkit.fidelity import *  # noqa: F403
