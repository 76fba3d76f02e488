"""The template sam local builds: template.yaml with the functions on x86_64."""

from __future__ import annotations

import re
from pathlib import Path

from tools.sam_local.plan import ROOT


def write_template(out: Path) -> None:
    """template.yaml with the functions on x86_64: this machine runs x86_64 containers without
    emulation (see README, "Try it in a container")."""
    text = (ROOT / "template.yaml").read_text()
    local, count = re.subn(r"(?m)^(\s*)Architectures: \[arm64\]$", r"\1Architectures: [x86_64]", text)
    if count != 1:
        raise SystemExit(f"sam-local: expected one 'Architectures: [arm64]' in template.yaml, found {count}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by tools/sam_local from template.yaml: x86_64 for sam local.\n" + local)
