"""`rolekeeper status` against a registry with a created role, an adopted role, a grant and drift."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import boto3
import pytest

from rolekeeper import cli
from tools.devkit.environment import OPT_IN
from tools.devkit.handlers import rebuild_handlers


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The status table's rows by OBJECT cell (cells are separated by two spaces or more; the
    indented lines under a row are its details)."""
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("OBJECT"))
    header = re.split(r"\s{2,}", lines[header_at].strip())
    rows = {}
    for line in lines[header_at + 1 :]:
        if not line.strip():
            break
        if not line.startswith(" "):
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


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
    rows = table_rows(text)
    assert rows["role ecsInstanceRole"]["ORIGIN"] == "adopted"
    assert "detached" in rows["role ecsInstanceRole"]["DRIFT"]
    assert rows["slr AWSServiceRoleForEC2SpotFleet"]["ORIGIN"] == "created"
    assert rows["slr AWSServiceRoleForEC2SpotFleet"]["LIVE ID"] == slr["attrs"]["role_id"]
    assert "claimed by stack app / logical id SpotFleetServiceLinkedRole, OnDelete Delete, healing on" in text
    assert (
        "claimed by stack other / logical id SpotFleetServiceLinkedRole, OnDelete Retain, healing on" in text
    )
    assert rows[f"grant on key {key.rsplit('/', 1)[1]}"]["DRIFT"] == "grant retired or revoked"
    assert "3 object(s), 2 with drift" in text


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
    db.update_item(
        TableName=table,
        Key={"pk": claim["pk"], "sk": claim["sk"]},
        UpdateExpression="SET priority = :p",
        ExpressionAttributeValues={":p": {"N": "7"}},
    )
    db.update_item(
        TableName=table,
        Key={"pk": claim["pk"], "sk": {"S": "OBJECT"}},
        UpdateExpression="SET future = :f",
        ExpressionAttributeValues={":f": {"M": {"a": {"N": "1"}}}},
    )
    capsys.readouterr()
    assert cli.main(["status", "--no-drift", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["objects"]
    assert entry["claims"][0]["wants"] == {"Description": "x"}
    assert entry["claims"][0]["priority"] == 7
    assert entry["added"] == ["tag:owner"]
    assert entry["other"] == {"future": {"a": 1}}
    assert entry["drift"] is None
    assert cli.main(["status", "--no-drift"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[3].split()[-2:] == ["not", "checked"]
    assert "rolekeeper status --json" in text


def test_status_of_an_empty_registry(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status"]) == 0
    assert "(nothing registered)" in capsys.readouterr().out


def test_status_without_a_table_says_why(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REGISTRY_TABLE_NAME")
    assert cli.main(["status", "--stack", "nope"]) == 2
    assert "rolekeeper status:" in capsys.readouterr().err


# What an operator's terminal must never receive raw: line breaks that fake extra lines (\n, \r,
# and Unicode's line and paragraph separators), ANSI/VT escape sequences (ESC, and the 8-bit CSI
# \x9b), other C0 and C1 controls, DEL, and invisible format characters (a right-to-left override).
HOSTILE = (
    "\nrolekeeper status: forged line\r\x1b[2J\x1b]0;t\x07\x1b[31m\x00\x08\x7f\x85\x9b1m\u2028\u2029\u202e"
)


def _unprintable(text: str) -> list[str]:
    """Every character of the output that is neither printable nor a line break between lines."""
    return sorted({repr(ch) for ch in text if ch != "\n" and not ch.isprintable()})


def test_status_escapes_control_characters_in_every_string_it_prints(
    aws: None, stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Description (IAM allows tab, newline and carriage return in one), a tag value (IAM allows
    Unicode separators) and registry strings (a stack id, a logical id, names: anyone who can
    write the table, or a newer rolekeeper) reach the operator's screen escaped, never raw."""
    import os

    from rolekeeper.aws.registry import Change, Fence, Registry
    from rolekeeper.domain.records import Claim, Kind

    description = "Spot Fleet\nslr AWSServiceRoleForEC2Spot  forged  drift none\rX\t\xff"
    assert stack.send("slr-create.json", props={"Description": description})["Status"] == "SUCCESS"
    tag = "a\u2028b\u2029c"
    tagged = stack.send(
        "role-ec2-application-create.json",
        drop=("ManagedPolicyArns",),
        props={"Tags": [{"Key": "team", "Value": tag}]},
    )
    assert tagged["Status"] == "SUCCESS"
    Registry(os.environ["REGISTRY_TABLE_NAME"]).objects.write(
        "ROLE#app-hostile",
        Fence(None),
        Change(
            Kind.ROLE,
            attrs={"name": "app-hostile" + HOSTILE, "role_id": "AROA" + HOSTILE},
            created=True,
            claim=Claim(
                stack_id="arn:aws:cloudformation:us-east-1:123456789012:stack/evil" + HOSTILE + "/1",
                logical_id="Role" + HOSTILE,
                wants={"name": "app-hostile" + HOSTILE, "description": HOSTILE},
            ),
        ),
        now=time.time(),
    )

    capsys.readouterr()
    cli.main(["status"])
    text = capsys.readouterr().out
    assert _unprintable(text) == []
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("rolekeeper status")] == lines[:1], "a forged line"
    assert all("\\nrolekeeper status: forged line" in line for line in lines[1:] if "forged line" in line)
    assert "\\n" in text and "\\x1b" in text and "\\u2028" in text, "escaped, not dropped"
    cli.main(["status", "--no-drift"])
    assert _unprintable(capsys.readouterr().out) == []

    # --json: escaped by JSON itself, and complete: the exact strings come back.
    cli.main(["status", "--json"])
    out = capsys.readouterr().out
    assert _unprintable(out) == []
    report = json.loads(out)
    hostile = next(o for o in report["objects"] if o["key"] == "ROLE#app-hostile")
    assert hostile["name"] == "app-hostile" + HOSTILE
    assert hostile["claims"][0]["logical_id"] == "Role" + HOSTILE
    slr = next(o for o in report["objects"] if o["kind"] == "slr")
    assert slr["desired"]["description"] == description
    app = next(o for o in report["objects"] if o["name"] == "app-web")
    assert app["desired"]["tags"] == {"team": tag}

    # Errors too: a table name is the operator's own input, but an AWS message may quote anything.
    assert cli.main(["status", "--table", "no-such" + HOSTILE]) == 2
    assert _unprintable(capsys.readouterr().err) == []


def test_status_after_a_heal_shows_the_live_grant_and_the_heals(
    aws: None,
    stack: Any,
    deletion_tasks: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The Spot Fleet role deleted by hand and healed: the grant made for its old RoleId is
    re-issued. status names the live grant (not the one CloudFormation's physical id still names),
    the heal on the role, and the re-issue on the grant."""
    from rolekeeper.handlers import healer
    from tools.devkit.events import healer_event
    from tools.devkit.lambda_context import LambdaContext

    assert stack.send("slr-create.json")["Status"] == "SUCCESS"
    key = boto3.client("kms").create_key(Tags=OPT_IN)["KeyMetadata"]["Arn"]
    grant = stack.send("grant-create.json", props={"KeyId": key})
    old_grant = grant["Data"]["GrantId"]
    task = boto3.client("iam").delete_service_linked_role(RoleName="AWSServiceRoleForEC2SpotFleet")
    rebuild_handlers()
    event = healer_event(
        "heal-delete-service-linked-role.json", responseElements={"deletionTaskId": task["DeletionTaskId"]}
    )
    result = healer.lambda_handler(event, LambdaContext(function_name="rolekeeper-HealerFunction"))
    assert result["outcome"] == "healed"
    (live,) = boto3.client("kms").list_grants(KeyId=key)["Grants"]
    assert live["GrantId"] != old_grant
    role_id = boto3.client("iam").get_role(RoleName="AWSServiceRoleForEC2SpotFleet")["Role"]["RoleId"]

    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    report = {o["kind"]: o for o in json.loads(capsys.readouterr().out)["objects"]}
    assert report["grant"]["live_id"] == live["GrantId"]
    assert report["grant"]["grant"]["physical_id_grant"] == old_grant
    assert report["grant"]["grant"]["reissued"] is True
    assert report["grant"]["grant"]["reissued_at"] is not None
    assert report["slr"]["live_id"] == role_id
    assert report["slr"]["heals_this_hour"] == 1
    assert report["slr"]["last_heal"] is not None

    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    rows = table_rows(text)
    grant_row = rows[f"grant on key {key.rsplit('/', 1)[1]}"]
    assert live["GrantId"].startswith(grant_row["LIVE ID"].removesuffix("..."))
    assert not old_grant.startswith(grant_row["LIVE ID"].removesuffix("..."))
    assert grant_row["LAST HEAL"].startswith("re-issued ")
    slr_row = rows["slr AWSServiceRoleForEC2SpotFleet"]
    assert (slr_row["LIVE ID"], slr_row["HEALS/HOUR"]) == (role_id, "1")
    assert slr_row["LAST HEAL"] != "never"
    assert f"grant {live['GrantId']} to AWSServiceRoleForEC2SpotFleet" in text
