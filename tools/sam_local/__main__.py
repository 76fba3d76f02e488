"""python -m tools.sam_local template <out> | run --sam ... --rootfs ... --build-dir ... --cache ... --work ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.sam_local.template import write_template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sam_local")
    sub = parser.add_subparsers(dest="command", required=True)
    template = sub.add_parser("template")
    template.add_argument("out")
    runner = sub.add_parser("run")
    runner.add_argument("--sam", required=True)
    runner.add_argument("--rootfs", required=True)
    runner.add_argument("--build-dir", required=True)
    runner.add_argument("--cache", required=True)
    runner.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    if args.command == "template":
        write_template(Path(args.out))
        return 0
    from tools.sam_local.runner import run  # the embedded AWS, Docker: only for a run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
