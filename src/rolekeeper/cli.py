"""`rolekeeper status`: what one account's registry holds, who claims it, heals, and drift now.

Read-only: it scans the registry table and reads IAM and KMS (GetRole, ListAttachedRolePolicies,
ListInstanceProfilesForRole, ListGrants); it never writes. Objects and claims are read through
`Registry.all()`; one more Scan supplies what that surface does not carry (heal counts, times,
attributes a newer rolekeeper wrote), so `--json` keeps everything the table holds.

    rolekeeper status [--table NAME | --stack NAME] [--json] [--no-drift]

The table: --table, else $REGISTRY_TABLE_NAME, else the RegistryTableName output of the stack
(--stack, default "rolekeeper"). Exit status 0: no drift; 1: drift found; 2: could not read.

Every string printed as text is escaped (`printable`): registry strings come from stack authors
(a Description, a tag) and from whoever can write the table, and must not draw on the screen.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rolekeeper.domain.records import Claim, Record

# Object-item attributes shown in their own fields (Record's, and the heal bookkeeping).
OBJECT_FIELDS = {
    "pk",
    "sk",
    "kind",
    "desired",
    "format",
    "created",
    "claim_count",
    "heal_count",
    "heal_window",
    "heal_lease",
    "heal_lease_by",
    "healed_at",
    "updated_at",
    "added",
    "pieces_tracked",
    "state",
    "deleting_by",
    "deletion_task_id",
    "deleting_since",
    "version",
}
CLAIM_FIELDS = {"pk", "sk", "stack_id", "logical_id", "on_delete", "heal", "wants"}
HEAL_WINDOW_SECONDS = 3600  # HealRateLimit counts heals per object in a sliding hour
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(value: Any) -> str:
    """value as text a terminal shows as it is, on one line: a backslash and every character
    Python's str.isprintable() rejects (C0 and C1 controls with ESC and CSI, DEL, Unicode line
    and paragraph separators, format characters such as a right-to-left override) are escaped
    the way a Python string literal writes them."""
    out = []
    for ch in str(value):
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


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


def _seconds(epoch: Any) -> float:
    try:
        return float(epoch)
    except (TypeError, ValueError):
        return 0.0


def _when(epoch: Any) -> str | None:
    seconds = _seconds(epoch)
    if not seconds:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stack_name(stack_id: str) -> str:
    """arn:aws:cloudformation:<region>:<account>:stack/<name>/<uuid> -> <name>."""
    parts = stack_id.split(":", 5)[-1].split("/")
    return parts[1] if len(parts) >= 3 and parts[0] == "stack" else stack_id


def read_items(table: str) -> list[dict[str, Any]]:
    """Every item of the table as plain Python values (what Registry.all() does not carry)."""
    from rolekeeper.aws import clients as aws
    from rolekeeper.aws.registry.items import decode_item

    items = []
    paginator = aws.dynamodb().get_paginator("scan")
    for page in paginator.paginate(TableName=table, ConsistentRead=True):
        for item in page.get("Items", []):
            items.append({k: _plain(v) for k, v in decode_item(item).items()})
    return items


def drift_now(record: Record) -> list[str]:
    """What differs from the recorded desired state now (the healer's own check, read-only)."""
    from rolekeeper.aws import kms
    from rolekeeper.domain.drift import drift
    from rolekeeper.healing.service import read_actual

    if record.kind == "grant":
        key_arn, grant_id = record.attrs.get("key_arn"), record.attrs.get("grant_id")
        if not key_arn or not grant_id:
            return ["grant not recorded completely"]
        return [] if kms.grant_exists(key_arn, grant_id) else ["grant retired or revoked"]
    name = record.attrs.get("name") or record.key.split("#", 1)[1]
    return drift(record, read_actual(name, with_pieces=record.kind == "role"))


def claim_in_words(claim: dict[str, Any]) -> str:
    return (
        f"stack {claim['stack']} / logical id {claim['logical_id']}, OnDelete {claim['on_delete']}, "
        f"healing {'on' if claim['heal'] else 'off'}"
    )


def _claim_entry(claim: Claim, raw: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "stack": stack_name(claim.stack_id),
        "stack_id": claim.stack_id,
        "logical_id": claim.logical_id,
        "on_delete": claim.on_delete,
        "heal": claim.heal,
        "wants": claim.wants,
    }
    entry["in_words"] = claim_in_words(entry)
    entry.update({k: _maybe_json(v) for k, v in sorted(raw.items()) if k not in CLAIM_FIELDS})
    return entry


def _desired(record: Record) -> dict[str, Any]:
    """What the claims want of the object (a role: the union of its claims' wants)."""
    from rolekeeper.domain import ownership

    if record.kind == "role" and record.wants():
        try:
            return ownership.desired_of(record).to_dict()
        except (TypeError, ValueError, KeyError):  # wants written by another version: shown as they are
            return {"wants": record.wants()}
    return record.spec()


def _grant_details(record: Record, raw: dict[str, Any]) -> dict[str, Any]:
    """The live grant, and whether it replaced the one CloudFormation's physical id names (the
    re-issue after its grantee role was recreated: a heal, or that role's next Create/Update)."""
    physical_grant = record.key.rsplit("#", 1)[-1] if record.key.count("#") >= 2 else None
    live = record.attrs.get("grant_id")
    reissued = bool(physical_grant and live and physical_grant != live)
    return {
        "key_arn": record.attrs.get("key_arn") or record.spec().get("key_arn"),
        "grantee": record.attrs.get("grantee_arn") or record.spec().get("grantee_role_name"),
        "grantee_role_id": record.attrs.get("grantee_role_id"),
        "physical_id_grant": physical_grant,
        "reissued": reissued,
        # The record's last write: for a grant, after its Create only a re-issue writes it.
        "reissued_at": _when(raw.get("updated_at")) if reissued else None,
    }


def _entry(
    record: Record, raw: dict[str, Any], raw_claims: dict[str, dict[str, Any]], now: float
) -> dict[str, Any]:
    name = record.attrs.get("name") or (record.key.split("#", 1)[1] if "#" in record.key else record.key)
    window = _seconds(raw.get("heal_window"))
    count = int(_seconds(raw.get("heal_count")))
    entry: dict[str, Any] = {
        "key": record.key,
        "kind": record.kind,
        "name": name,
        "live_id": record.attrs.get("grant_id" if record.kind == "grant" else "role_id"),
        "created_by_rolekeeper": record.created,
        "origin": "created" if record.created else "adopted",
        "state": record.state or "present",
        "claims": [_claim_entry(c, raw_claims.get(c.sk, {})) for c in record.claims],
        "claim_count": record.claim_count,
        "heals_in_window": count,
        "heals_this_hour": count if window and now - window < HEAL_WINDOW_SECONDS else 0,
        "heal_window_started": _when(window),
        "last_heal": _when(record.healed_at),
        "heal_lease_until": _when(raw.get("heal_lease")),
        "updated": _when(raw.get("updated_at")),
        "desired": _desired(record),
        "added": sorted(record.added) if record.added is not None else None,
        "version": record.version,
        "attrs": dict(sorted(record.attrs.items())),
        "other": {
            k: _maybe_json(v)
            for k, v in sorted(raw.items())
            if k not in OBJECT_FIELDS and k not in record.attrs
        },
        "drift": None,
    }
    if record.deleting:
        entry["deleting"] = {
            "by_request": record.deleting_by,
            "since": _when(record.deleting_since),
            "deletion_task_id": record.deletion_task_id or None,
        }
    if record.kind == "grant":
        entry["grant"] = _grant_details(record, raw)
        entry["name"] = f"on key {str(entry['grant']['key_arn'] or '?').rsplit('/', 1)[-1]}"
    return entry


def status(table: str, *, check_drift: bool = True, now: float | None = None) -> list[dict[str, Any]]:
    """One entry per registered object (and per key holding claims without an object item)."""
    from rolekeeper.aws.registry import OBJECT, Registry
    from rolekeeper.domain.records import CLAIM

    now = time.time() if now is None else now
    records = list(Registry(table).objects.all())
    raw_objects: dict[str, dict[str, Any]] = {}
    raw_claims: dict[str, dict[str, dict[str, Any]]] = {}
    for item in read_items(table):
        sk = str(item.get("sk", ""))
        if sk == OBJECT:
            raw_objects[str(item["pk"])] = item
        elif sk.startswith(CLAIM):
            raw_claims.setdefault(str(item["pk"]), {})[sk] = item
    out = []
    for record in records:
        entry = _entry(record, raw_objects.get(record.key, {}), raw_claims.get(record.key, {}), now)
        if check_drift:
            try:
                entry["drift"] = drift_now(record)
            except Exception as error:  # one unreadable object must not hide the others
                entry["drift"] = [f"could not check: {type(error).__name__}: {error}"]
        out.append(entry)
    known = {r.key for r in records}
    for key in sorted(raw_claims.keys() - known):  # claims whose object item is gone
        claims = []
        for raw in raw_claims[key].values():
            claim = {
                "stack": stack_name(str(raw.get("stack_id", ""))),
                "stack_id": raw.get("stack_id"),
                "logical_id": raw.get("logical_id"),
                "on_delete": raw.get("on_delete", "Retain"),
                "heal": raw.get("heal", True),
                **{k: _maybe_json(v) for k, v in sorted(raw.items()) if k not in CLAIM_FIELDS - {"wants"}},
            }
            claim["in_words"] = claim_in_words(claim)
            claims.append(claim)
        out.append(
            {
                "key": key,
                "kind": "claims only",
                "name": key.split("#", 1)[-1],
                "live_id": None,
                "origin": "-",
                "claims": claims,
                "drift": ["no object record for these claims"] if check_drift else None,
            }
        )
    order = {"slr": 0, "role": 1, "grant": 2}
    return sorted(out, key=lambda e: (order.get(e["kind"], 3), str(e["name"]).lower(), e["key"]))


def _short(grant_id: Any) -> str:
    text = str(grant_id or "-")
    return text[:16] + "..." if len(text) > 20 else text


def _row(entry: dict[str, Any]) -> list[str]:
    if entry["kind"] == "claims only":
        return [f"? {entry['name']}", "-", "-", "-", "-", _drift_text(entry)]
    last = entry["last_heal"] or "never"
    grant = entry.get("grant") or {}
    if grant.get("reissued"):
        last = f"re-issued {entry['last_heal'] or grant['reissued_at'] or ''}".strip()
    live = _short(entry["live_id"]) if entry["kind"] == "grant" else str(entry["live_id"] or "-")
    return [
        f"{entry['kind']} {entry['name']}",
        live,
        entry["origin"],
        str(entry["heals_this_hour"]),
        last,
        _drift_text(entry),
    ]


def _drift_text(entry: dict[str, Any]) -> str:
    if entry["drift"] is None:
        return "not checked"
    return "; ".join(entry["drift"]) or "none"


def _details(entry: dict[str, Any]) -> list[str]:
    lines = []
    grant = entry.get("grant")
    if grant:
        grantee = str(grant["grantee"] or "?").rsplit("/", 1)[-1]
        lines.append(f"grant {entry['live_id']} to {grantee}, key {grant['key_arn']}")
        if grant["reissued"]:
            lines.append(
                f"re-issued for the recreated grantee (RoleId {grant['grantee_role_id']}); "
                f"CloudFormation's physical id still names the replaced grant {grant['physical_id_grant']}"
            )
    if entry.get("deleting"):
        deleting = entry["deleting"]
        task = f", IAM deletion task {deleting['deletion_task_id']}" if deleting["deletion_task_id"] else ""
        lines.append(
            f"being deleted since {deleting['since'] or '?'} by request {deleting['by_request']}{task}"
        )
    lines += [f"claimed by {c['in_words']}" for c in entry["claims"]]
    if not entry["claims"]:
        lines.append("claimed by no stack (kept, not healed; a stack's Create claims it again)")
    return lines


MAX_WIDTH = 48
HEADER = ["OBJECT", "LIVE ID", "ORIGIN", "HEALS/HOUR", "LAST HEAL", "DRIFT"]


def render(entries: list[dict[str, Any]], table: str) -> str:
    """The operator's table: one row per object, then who claims it, in words. Every cell and
    line is escaped (printable), whatever the registry holds."""
    drifting = sum(1 for e in entries if e["drift"])
    lines = [
        printable(
            f"rolekeeper status: registry {table} (read-only): {len(entries)} object(s), {drifting} with drift"
        )
    ]
    if not entries:
        lines.append("  (nothing registered)")
        return "\n".join(lines)
    rows = [[printable(cell) for cell in _row(e)] for e in entries]
    # A cell past MAX_WIDTH overflows its own row rather than push every other row aside.
    widths = [min(MAX_WIDTH, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(HEADER[:-1])]

    def line(cells: list[str]) -> str:
        return "  ".join([c.ljust(w) for c, w in zip(cells, widths, strict=False)] + [cells[-1]]).rstrip()

    lines += ["", line(HEADER)]
    for entry, row in zip(entries, rows, strict=True):
        lines.append(line(row))
        lines += [f"    {printable(detail)}" for detail in _details(entry)]
    lines += ["", "Every attribute, unabridged: rolekeeper status --json"]
    return "\n".join(lines)


def table_from_stack(stack: str) -> str:
    from rolekeeper.aws import clients as aws

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


def add_validate_command(commands: Any) -> None:
    """`rolekeeper validate TEMPLATE...`: what the function would refuse, before deploy (no AWS call)."""
    check = commands.add_parser(
        "validate",
        help="check templates' rolekeeper resources as the function would (exit 1: findings)",
        description="Each finding: file:line: resource: the Reason the function would answer. "
        "The deployment's parameters: these options, else the template's Metadata (rolekeeper:), "
        "else rolekeeper's defaults.",
    )
    check.add_argument("templates", nargs="+", metavar="TEMPLATE", help="YAML or JSON template")
    for option, name, what in (
        ("--allowed-service-names", "AllowedServiceNames", "comma-separated"),
        ("--allowed-managed-policy-arns", "AllowedManagedPolicyArns", "comma-separated"),
        ("--application-role-name-prefix", "ApplicationRoleNamePrefix", "e.g. app-"),
        ("--allowed-tag-keys", "AllowedTagKeys", "comma-separated"),
        ("--allowed-permissions-boundary-arns", "AllowedPermissionsBoundaryArns", "comma-separated"),
    ):
        check.add_argument(option, dest=name, metavar="VALUE", help=f"the deployment's {name} ({what})")
    check.add_argument(
        "--region", default="us-east-1", help="where it deploys (its partition; default us-east-1)"
    )


def run_validate(args: argparse.Namespace) -> int:
    try:
        from rolekeeper.validate import DEFAULTS, findings
    except ImportError as error:  # PyYAML: cfn-lint brings it, or pip install pyyaml
        print(f"rolekeeper validate: {error}; install PyYAML (pip install pyyaml)", file=sys.stderr)
        return 2
    parameters = {name: getattr(args, name) for name in DEFAULTS if getattr(args, name) is not None}
    count, unreadable = 0, False
    for path in args.templates:
        try:
            with open(path, encoding="utf-8") as template:
                text = template.read()
        except (OSError, UnicodeDecodeError) as error:
            print(f"rolekeeper validate: {path}: {error}", file=sys.stderr)
            unreadable = True
            continue
        for finding in findings(text, parameters, args.region):
            print(f"{path}:{finding}")
            count += 1
    print(
        f"rolekeeper validate: {count} finding{'s' if count != 1 else ''} in {len(args.templates)} template(s)",
        file=sys.stderr,
    )
    return 2 if unreadable else 1 if count else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rolekeeper", description="rolekeeper operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="registry objects, claims, heals and drift now (read-only)")
    show.add_argument("--table", help="registry table name (default: $REGISTRY_TABLE_NAME or the stack's)")
    show.add_argument("--stack", default="rolekeeper", help="rolekeeper's stack name (default: rolekeeper)")
    show.add_argument("--json", action="store_true", help="machine-readable output, every attribute")
    show.add_argument("--no-drift", action="store_true", help="registry only; no IAM or KMS reads")
    add_guardrail_command(commands)
    add_validate_command(commands)
    args = parser.parse_args(argv)
    if args.command == "guardrail":
        return run_guardrail(args)
    if args.command == "validate":
        return run_validate(args)
    try:
        table = args.table or os.environ.get("REGISTRY_TABLE_NAME") or table_from_stack(args.stack)
        entries = status(table, check_drift=not args.no_drift)
    except Exception as error:
        print(printable(f"rolekeeper status: {type(error).__name__}: {error}"), file=sys.stderr)
        return 2
    if args.json:
        # JSON escapes control characters itself; ensure_ascii also escapes every non-ASCII one.
        print(json.dumps({"table": table, "objects": entries}, indent=2, default=str, ensure_ascii=True))
    else:
        print(render(entries, table))
    return 1 if any(e["drift"] for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
