"""rolekeeper validate says what the function says: each finding in the corpus of wrong templates
(tests/data/validate) is sent to the function, as CloudFormation would send those properties,
and its Reason is the finding's text, word for word."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack
from tools.devkit.events import ROOT, load_event
from tools.devkit.handlers import rebuild_handlers

CORPUS = ROOT / "tests" / "data" / "validate"
EVENTS = {
    "Custom::ServiceLinkedRole": "slr-create.json",
    "Custom::ServiceRole": "role-ecs-instance-create.json",
    "Custom::SpotFleetKmsGrant": "grant-create.json",
}


@pytest.mark.parametrize("path", sorted(CORPUS.glob("wrong-*.yaml")), ids=lambda p: p.name)
def test_the_function_refuses_each_finding_with_the_same_words(
    path: Path, aws: None, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolekeeper.config import settings
    from rolekeeper.domain.properties import own_properties
    from rolekeeper.validate import (
        _deploy_time_paths,
        as_sent,
        deployment_settings,
        findings,
        load,
        template_parameters,
    )

    text = path.read_text()
    template, _ = load(text)
    # The function deployed with the parameters the template names (else rolekeeper's defaults).
    deployed = deployment_settings(template_parameters(template)[0])
    for name, values in (
        ("ALLOWED_SERVICE_NAMES", deployed.allowed_service_names),
        ("ALLOWED_MANAGED_POLICY_ARNS", deployed.allowed_managed_policy_arns),
        ("ALLOWED_ROLE_NAMES", deployed.allowed_role_names),
        ("ALLOWED_TAG_KEYS", deployed.allowed_tag_keys),
        ("ALLOWED_PERMISSIONS_BOUNDARY_ARNS", deployed.allowed_permissions_boundary_arns),
    ):
        monkeypatch.setenv(name, ",".join(sorted(values)))
    rebuild_handlers()

    found = findings(text)
    assert found
    for finding in found:
        resource = template["Resources"][finding.resource]
        properties = as_sent(own_properties(resource["Properties"]))
        assert list(_deploy_time_paths(properties)) == [], "the corpus holds literal values only"
        event_file = EVENTS.get(resource["Type"], "slr-create.json")
        sample = load_event(event_file)["ResourceProperties"]
        response = stack.send(
            event_file,
            logical_id=finding.resource,
            props=properties,
            drop=tuple(k for k in sample if k != "ServiceToken" and k not in properties),
            ResourceType=resource["Type"],
        )
        assert response["Status"] == "FAILED", finding
        assert len(finding.message) <= 256
        assert response["Reason"] == finding.message
    settings.cache_clear()
