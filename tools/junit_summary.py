"""Print a JUnit report's counts as one closing line: `ci: N passed, N failed, N skipped`.

Exits non-zero when the report counts no test, so a run that executed nothing cannot pass.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def summary(path: str) -> tuple[int, int, int]:
    root = ET.parse(path).getroot()  # noqa: S314 - pytest's own report, written by this run
    suites = [root] if root.tag == "testsuite" else list(root)
    total, failed, skipped = 0, 0, 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return total - failed - skipped, failed, skipped


def main(argv: list[str]) -> int:
    passed, failed, skipped = summary(argv[1])
    if passed + failed + skipped == 0:
        print("ci: no test ran", file=sys.stderr)
        return 1
    print(f"ci: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
