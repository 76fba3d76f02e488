"""cfn-lint rule E9101: rolekeeper's custom resources checked as the function checks them.

Loaded by cfn-lint's own rule mechanism, from a module import path (rolekeeper installed in, or
on PYTHONPATH of, the Python that runs cfn-lint):

    cfn-lint --append-rules rolekeeper.cfnlint_rules -- template.yaml

or in .cfnlintrc, which editors running cfn-lint read too:

    append_rules: [rolekeeper.cfnlint_rules]
    configure_rules:
      E9101: {AllowedTagKeys: team, AllowedManagedPolicyArns: "arn:aws:iam::aws:policy/..."}

The deployment's parameters come from configure_rules, else from the template's own
`Metadata: rolekeeper:`, else rolekeeper's defaults; the partition from cfn-lint's first region.
The findings are rolekeeper.validate's (docs/validate.md).
"""

from __future__ import annotations

from typing import Any

from cfnlint.rules import CloudFormationLintRule, RuleMatch

from rolekeeper.validate import DEFAULT_REGION, DEFAULTS, check_template


class RolekeeperProperties(CloudFormationLintRule):  # type: ignore[misc]
    id = "E9101"
    shortdesc = "rolekeeper custom resource properties"
    description = (
        "Custom::ServiceLinkedRole, Custom::ServiceRole and Custom::SpotFleetKmsGrant properties, "
        "checked with rolekeeper's own validation and the deployment's parameters"
    )
    source_url = ""
    tags = ["resources", "custom", "rolekeeper"]

    def __init__(self) -> None:
        super().__init__()
        # Each a template parameter of the rolekeeper deployment; None: not configured.
        self.config_definition = {
            name: {"default": None, "type": "list", "itemtype": "string"} for name in DEFAULTS
        }
        self.configure()

    def match(self, cfn: Any) -> list[Any]:
        parameters = {name: value for name, value in self.config.items() if name in DEFAULTS and value}
        region = cfn.regions[0] if cfn.regions else DEFAULT_REGION
        return [
            RuleMatch(list(finding.path), finding.message)
            for finding in check_template(cfn.template, parameters, region)
        ]
