"""Run by parliament's own venv: reads {"name": policy} on stdin, prints findings, exits 1 on any.

Two findings are expected by design and set aside, each only where it applies:
- trust policies have no Resource (IAM forbids one there); parliament reads every document as an
  identity policy and calls that MALFORMED;
- rolekeeper's own functions manage roles and grants, which is what the community auditor
  PERMISSIONS_MANAGEMENT_ACTIONS points at; template.yaml scopes each of those actions to the
  blueprint role names, allowed services, allowed policies and the Spot Fleet grantee (the healer's
  own policy only iam:PutRolePermissionsBoundary, to put back a boundary a claim wants); the
  example's iam:PassRole is what launching instances with an application role needs, scoped to
  EC2 and to roles carrying rolekeeper's marker tag.
"""

from __future__ import annotations

import json
import sys

from parliament import analyze_policy_string

EXPECTED = {
    "trust:": {("MALFORMED", "Statement contains neither Resource nor NotResource")},
    "template.yaml:ConvergePolicy": {("PERMISSIONS_MANAGEMENT_ACTIONS", "")},
    "template.yaml:ProvisionerFunction:": {("PERMISSIONS_MANAGEMENT_ACTIONS", "")},
    # The healer puts back a boundary a claim wants, scoped as the provisioner's boundary
    # statements; nothing else of its own may manage permissions.
    "template.yaml:HealerFunction:": {
        (
            "PERMISSIONS_MANAGEMENT_ACTIONS",
            "{'actions': ['iam:putrolepermissionsboundary'], 'filepath': None}",
        )
    },
    "batch-platform.yaml:PassApplicationRoles": {("PERMISSIONS_MANAGEMENT_ACTIONS", "")},
}


def expected(name: str, issue: str, title: str, where: str = "") -> bool:
    """title: the finding's detail; where: its location (the actions, for this auditor)."""
    return any(
        name.startswith(prefix) and any(issue == i and (not t or t in (title, where)) for i, t in pairs)
        for prefix, pairs in EXPECTED.items()
    )


def main() -> int:
    documents = json.load(sys.stdin)
    problems = 0
    for name, document in documents.items():
        policy = analyze_policy_string(json.dumps(document), include_community_auditors=True)
        for finding in policy.findings:
            if expected(name, finding.issue, str(finding.detail).strip(), str(finding.location).strip()):
                continue
            problems += 1
            print(f"{name}: {finding.issue} {finding.title} {finding.detail} {finding.location}")
    print(f"parliament: {len(documents)} policies checked, {problems} findings")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
