"""`rolekeeper status`: what one account's registry holds, who claims it, and drift found now.

Read-only: it scans the registry table and reads IAM and KMS (GetRole, ListAttachedRolePolicies,
ListInstanceProfilesForRole, ListGrants); it never writes. The registry is read generically:
attributes this version does not know (claims or objects written by a newer rolekeeper) are
shown as they are, not dropped.

    rolekeeper status [--table NAME | --stack NAME] [--json]

The table: --table, else $REGISTRY_TABLE_NAME, else the RegistryTableName output of the stack
(--stack, default "rolekeeper"). Exit status 0: no drift; 1: drift found; 2: could not read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

# Attributes every object or claim item has, shown in their own fields; anything else is "other".
OBJECT_FIELDS = {
    "pk",
    "sk",
    "kind",
    "desired",
    "created",
    "claim_count",
    "heal_count",
    "heal_window",
    "heal_lease",
    "heal_lease_by",
    "healed_at",
    "updated_at",
}
CLAIM_FIELDS = {"pk", "sk", "stack_id", "logical_id", "on_delete", "heal"}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _when(epoch: Any) -> str | None:
    try:
        seconds = float(epoch)
    except (TypeError, ValueError):
        return None
    if not seconds:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stack_name(stack_id: str) -> str:
    """arn:aws:cloudformation:<region>:<account>:stack/<name>/<uuid> -> <name>."""
    parts = stack_id.split(":", 5)[-1].split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "stack" else stack_id


def _name(key: str, item: dict[str, Any]) -> str:
    if item.get("kind") == "grant" and item.get("key_arn") and item.get("grant_id"):
        return f"{str(item['key_arn']).rsplit('/', 1)[-1]} grant {str(item['grant_id'])[:16]}..."
    return str(item.get("name") or (key.split("#", 1)[1] if "#" in key else key))


def read_items(table: str) -> list[dict[str, Any]]:
    from boto3.dynamodb.types import TypeDeserializer

    from rolekeeper import aws

    deserialize = TypeDeserializer().deserialize
    items = []
    paginator = aws.dynamodb().get_paginator("scan")
    for page in paginator.paginate(TableName=table, ConsistentRead=True):
        for item in page.get("Items", []):
            items.append({k: _plain(deserialize(v)) for k, v in item.items()})
    return items


def drift_now(record: Any) -> list[str]:
    """What differs from the recorded desired state now (the healer's own check, read-only)."""
    from rolekeeper import kms
    from rolekeeper.healing import Actual, drift

    if record.kind == "grant":
        key_arn, grant_id = record.attrs.get("key_arn"), record.attrs.get("grant_id")
        if not key_arn or not grant_id:
            return ["grant not recorded completely"]
        return [] if kms.grant_exists(key_arn, grant_id) else ["grant retired or revoked"]
    name = record.attrs.get("name") or record.key.split("#", 1)[1]
    return drift(record, Actual.read(name, with_pieces=record.kind == "role"))


def status(table: str, *, check_drift: bool = True) -> list[dict[str, Any]]:
    from rolekeeper.registry import CLAIM, OBJECT, Registry

    items = read_items(table)
    records = {r.key: r for r in Registry(table).all()} if check_drift else {}
    objects: dict[str, dict[str, Any]] = {}
    claims: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if item.get("sk") == OBJECT:
            objects[item["pk"]] = item
        elif str(item.get("sk", "")).startswith(CLAIM):
            claims.setdefault(item["pk"], []).append(item)
    out = []
    for key in sorted(objects.keys() | claims.keys()):
        item = objects.get(key, {})
        desired = _maybe_json(item.get("desired", {}))
        entry: dict[str, Any] = {
            "key": key,
            "kind": item.get("kind", "(no object item: claims only)"),
            "name": _name(key, item),
            "created_by_rolekeeper": bool(item.get("created", False)),
            "desired": desired,
            "claims": [
                {
                    "stack": stack_name(str(c.get("stack_id", ""))),
                    "stack_id": c.get("stack_id"),
                    "logical_id": c.get("logical_id"),
                    "on_delete": c.get("on_delete", "Retain"),
                    "heal": c.get("heal", True),
                    **{k: _maybe_json(v) for k, v in sorted(c.items()) if k not in CLAIM_FIELDS},
                }
                for c in sorted(claims.get(key, []), key=lambda c: str(c.get("sk")))
            ],
            "claim_count": item.get("claim_count"),
            "heals_in_window": item.get("heal_count", 0),
            "heal_window_started": _when(item.get("heal_window")),
            "last_heal": _when(item.get("healed_at")),
            "updated": _when(item.get("updated_at")),
            "other": {k: _maybe_json(v) for k, v in sorted(item.items()) if k not in OBJECT_FIELDS},
        }
        record = records.get(key)
        if check_drift and record is not None:
            try:
                entry["drift"] = drift_now(record)
            except Exception as error:  # one unreadable object must not hide the others
                entry["drift"] = [f"could not check: {type(error).__name__}: {error}"]
        else:
            entry["drift"] = None
        out.append(entry)
    return out


def _desired_summary(kind: str, desired: Any) -> str:
    if not isinstance(desired, dict) or not desired:
        return "-"
    if kind == "grant":
        ops = desired.get("operations") or desired.get("Operations")
        return f"key {desired.get('key_arn', '?')}, operations {', '.join(ops) if ops else '?'}"
    shown = {k: v for k, v in desired.items() if v not in (None, "", [], {}, False)}
    return ", ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(shown.items())
    )


def render(entries: list[dict[str, Any]], table: str) -> str:
    lines = [f"rolekeeper status: registry {table} (read-only)"]
    if not entries:
        lines.append("  (nothing registered)")
        return "\n".join(lines)
    for e in entries:
        lines.append("")
        lines.append(f"{e['kind']} {e['name']}   [{e['key']}]")
        if e["created_by_rolekeeper"]:
            origin = "yes (rolekeeper made it; the last claim's OnDelete: Delete removes it)"
        else:
            origin = "no, adopted (it existed; rolekeeper added only what its desired state lists, and never deletes it)"
        lines.append(f"  created by rolekeeper: {origin}")
        lines.append(f"  desired: {_desired_summary(e['kind'], e['desired'])}")
        lines.append(f"  claims ({len(e['claims'])}):" if e["claims"] else "  claims: none")
        for c in e["claims"]:
            extra = "".join(
                f"  {k}={json.dumps(v) if not isinstance(v, str) else v}"
                for k, v in c.items()
                if k not in {"stack", "stack_id", "logical_id", "on_delete", "heal"}
            )
            lines.append(
                f"    {c['stack']}/{c['logical_id']}  OnDelete={c['on_delete']}  Heal={str(c['heal']).lower()}{extra}"
            )
        heals = e["heals_in_window"] or 0
        last = e["last_heal"] or "never"
        window = f" (window from {e['heal_window_started']})" if e["heal_window_started"] else ""
        lines.append(f"  heals: {heals} in the current hour window{window}; last heal: {last}")
        if e["drift"] is None:
            lines.append("  drift now: not checked")
        else:
            lines.append(f"  drift now: {'; '.join(e['drift']) if e['drift'] else 'none'}")
        for k, v in e["other"].items():
            lines.append(f"  {k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return "\n".join(lines)


def table_from_stack(stack: str) -> str:
    from rolekeeper import aws

    described = aws.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    for output in described.get("Outputs", []):
        if output["OutputKey"] == "RegistryTableName":
            return str(output["OutputValue"])
    raise LookupError(f"stack {stack} has no RegistryTableName output")


def add_guardrail_command(commands: Any) -> None:
    """`rolekeeper guardrail scp|boundary`: print the guardrail (docs/guardrail.md); no AWS call."""
    guardrail = commands.add_parser(
        "guardrail", help="print the guardrail: an SCP or a boundary's Deny statements"
    )
    kinds = guardrail.add_subparsers(dest="kind", required=True)
    scp = kinds.add_parser("scp", help="a service control policy for AWS Organizations (compact JSON)")
    boundary = kinds.add_parser(
        "boundary", help="the Deny statements to add to every other principal's boundary"
    )
    for kind in (scp, boundary):
        kind.add_argument(
            "--function-role-arn-pattern",
            action="append",
            default=[],
            metavar="ARN",
            help="rolekeeper's function roles (repeat for each; * and ? allowed, the account may be *)",
        )
        kind.add_argument(
            "--break-glass-role", action="append", default=[], metavar="ARN", help="exempt role (repeatable)"
        )
        kind.add_argument("--prefix", default="app-", help="ApplicationRoleNamePrefix (default: app-)")
        kind.add_argument("--partition", default="aws", help="aws (default), aws-cn, aws-us-gov")
    scp.add_argument("--pretty", action="store_true", help="indented (white space counts against the quota)")
    boundary.add_argument(
        "--boundary-policy-arn",
        help="the boundary that will hold them: adds statements that keep it in place",
    )
    boundary.add_argument(
        "--document", action="store_true", help="a whole boundary policy (Allow * and the Denies), not a list"
    )


def run_guardrail(args: argparse.Namespace) -> int:
    from rolekeeper import guardrail

    exempt = [*args.function_role_arn_pattern, *args.break_glass_role]
    problems = guardrail.check_exemptions(
        args.function_role_arn_pattern, args.break_glass_role, prefix=args.prefix, partition=args.partition
    )
    problems += guardrail.check_prefix(args.prefix)
    if getattr(args, "boundary_policy_arn", None):
        problems += guardrail.check_boundary_policy_arn(args.boundary_policy_arn, partition=args.partition)
    if problems:
        for problem in problems:
            print(f"rolekeeper guardrail: {problem}", file=sys.stderr)
        return 2
    document: Any
    if args.kind == "scp":
        document = guardrail.scp(exempt, prefix=args.prefix, partition=args.partition)
        text = json.dumps(document, indent=2) if args.pretty else guardrail.compact(document)
        size, limit = len(text), guardrail.SCP_MAX_CHARS
    else:
        statements = guardrail.boundary_statements(
            exempt, prefix=args.prefix, partition=args.partition, boundary_policy_arn=args.boundary_policy_arn
        )
        document = guardrail.boundary_document(statements) if args.document else statements
        size, limit = guardrail.policy_chars(document), guardrail.MANAGED_POLICY_MAX_CHARS
        text = json.dumps(document, indent=2)
    print(f"rolekeeper guardrail {args.kind}: {size} of {limit} characters", file=sys.stderr)
    if size > limit:
        print(f"rolekeeper guardrail: too large for the {limit}-character quota", file=sys.stderr)
        return 1
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rolekeeper", description="rolekeeper operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="registry objects, claims, heals and drift now (read-only)")
    show.add_argument("--table", help="registry table name (default: $REGISTRY_TABLE_NAME or the stack's)")
    show.add_argument("--stack", default="rolekeeper", help="rolekeeper's stack name (default: rolekeeper)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--no-drift", action="store_true", help="registry only; no IAM or KMS reads")
    add_guardrail_command(commands)
    args = parser.parse_args(argv)
    if args.command == "guardrail":
        return run_guardrail(args)
    try:
        table = args.table or os.environ.get("REGISTRY_TABLE_NAME") or table_from_stack(args.stack)
        entries = status(table, check_drift=not args.no_drift)
    except Exception as error:
        print(f"rolekeeper status: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"table": table, "objects": entries}, indent=2, default=str))
    else:
        print(render(entries, table))
    return 1 if any(e["drift"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
