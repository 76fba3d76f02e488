"""`rolekeeper status` against a registry with a created role, an adopted role, a grant and drift."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from rolekeeper import cli
from tests.conftest import OPT_IN


def test_status_shows_claims_origin_heals_and_drift(
    aws: None, stack: Any, other_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.send("slr-create.json", props={"OnDelete": "Delete"})["Status"] == "SUCCESS"
    assert other_stack.send("slr-create.json")["Status"] == "SUCCESS"
    iam = boto3.client("iam")
    iam.create_role(
        RoleName="ecsInstanceRole",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    assert stack.send("role-ecs-instance-create.json")["Status"] == "SUCCESS"
    key = boto3.client("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
    grant = stack.send("grant-create.json", props={"KeyId": key})
    assert grant["Status"] == "SUCCESS"
    iam.detach_role_policy(
        RoleName="ecsInstanceRole",
        PolicyArn="arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",
    )
    boto3.client("kms").revoke_grant(KeyId=key, GrantId=grant["Data"]["GrantId"])

    capsys.readouterr()  # the handlers' logs
    assert cli.main(["status", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    by_name = {o["name"].lower(): o for o in report["objects"]}
    slr = by_name["awsserviceroleforec2spotfleet"]
    assert slr["created_by_rolekeeper"] is True
    assert sorted((c["stack"], c["on_delete"]) for c in slr["claims"]) == [
        ("app", "Delete"),
        ("other", "Retain"),
    ]
    assert slr["drift"] == []
    ecs = by_name["ecsinstancerole"]
    assert ecs["created_by_rolekeeper"] is False
    assert any("detached" in d for d in ecs["drift"])
    (grant_entry,) = [o for o in report["objects"] if o["kind"] == "grant"]
    assert grant_entry["drift"] == ["grant retired or revoked"]

    assert cli.main(["status"]) == 1
    text = capsys.readouterr().out
    assert "created by rolekeeper: no, adopted" in text
    assert "app/SpotFleetServiceLinkedRole  OnDelete=Delete  Heal=true" in text or "OnDelete=Delete" in text
    assert "drift now: grant retired or revoked" in text


def test_status_shows_attributes_it_does_not_know(
    aws: None, stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newer rolekeeper may store more per claim (say, what it wants) or per object."""
    import os

    assert stack.send("slr-create.json")["Status"] == "SUCCESS"
    db = boto3.client("dynamodb")
    table = os.environ["REGISTRY_TABLE_NAME"]
    items = db.scan(TableName=table)["Items"]
    claim = next(i for i in items if i["sk"]["S"].startswith("CLAIM#"))
    db.update_item(
        TableName=table,
        Key={"pk": claim["pk"], "sk": claim["sk"]},
        UpdateExpression="SET wants = :w",
        ExpressionAttributeValues={":w": {"S": '{"Description": "x"}'}},
    )
    db.update_item(
        TableName=table,
        Key={"pk": claim["pk"], "sk": {"S": "OBJECT"}},
        UpdateExpression="SET added = :a",
        ExpressionAttributeValues={":a": {"SS": ["tag:owner"]}},
    )
    capsys.readouterr()
    assert cli.main(["status", "--no-drift"]) == 0
    text = capsys.readouterr().out
    assert 'wants={"Description": "x"}' in text
    assert 'added: ["tag:owner"]' in text
    assert "drift now: not checked" in text


def test_status_of_an_empty_registry(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 0
    assert "(nothing registered)" in capsys.readouterr().out


def test_status_without_a_table_says_why(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REGISTRY_TABLE_NAME")
    assert cli.main(["status", "--stack", "nope"]) == 2
    assert "rolekeeper status:" in capsys.readouterr().err
