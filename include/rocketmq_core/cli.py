"""rmqctl: the core's answers on a terminal, for on-call use outside Airflow.

    rmqctl diff    --source NS --target NS [--topics P] [--groups P]   metadata drift; exit 1 when any
    rmqctl backlog -n NS GROUP...                                      exact backlog, pending system messages too
    rmqctl export  -n NS -o FILE                                       mqadmin exportMetadata JSON
    rmqctl import  FILE -n NS [--dry-run] [--allow-delete]             plan, then apply (deletes only when allowed)
    rmqctl clients -n NS GROUP...                                      consumer and producer connections

Tables by default, ``--json`` for JSON on stdout. Exit codes: 0 done (no drift, drained), 1 drift
(``diff``) or backlog left (``backlog --check``), 2 an error: one line on stderr naming what failed.

Credentials: ``--access-key`` (or RMQ_ACCESS_KEY) with the secret from the environment variable
RMQ_SECRET_KEY or from ``--secret-key-file``; never from the command line, where ``ps`` shows it.
``diff`` takes the target's own pair from ``--target-access-key`` with RMQ_TARGET_SECRET_KEY or
``--target-secret-key-file``, and uses the source's pair for both when that is not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rocketmq_core.admin import ClusterAdmin, gather_all
from rocketmq_core.backlog import measure_backlog
from rocketmq_core.errors import RocketMQError
from rocketmq_core.metadata.apply import PlanResult, apply_plan
from rocketmq_core.metadata.diff import MetadataDiff, diff
from rocketmq_core.metadata.fields import DELETE
from rocketmq_core.metadata.plan import Plan, make_plan
from rocketmq_core.metadata.scope import Scope
from rocketmq_core.metadata.snapshot import ClusterSnapshot, take_snapshot
from rocketmq_core.model import ClientConnection
from rocketmq_core.remoting.client import Credentials

PROG = "rmqctl"
EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
ACCESS_KEY_ENV = "RMQ_ACCESS_KEY"
SECRET_KEY_ENV = "RMQ_SECRET_KEY"
TARGET_ACCESS_KEY_ENV = "RMQ_TARGET_ACCESS_KEY"
TARGET_SECRET_KEY_ENV = "RMQ_TARGET_SECRET_KEY"
NAMESRV_ENV = "RMQ_NAMESRV"


class UsageError(Exception):
    """A command line that parsed but cannot be run (e.g. an access key without a secret)."""


# --- arguments ------------------------------------------------------------------------------

class _RefuseSecret(argparse.Action):
    """``--secret-key VALUE`` is refused without echoing the value: it would be visible in ``ps``."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        parser.error(f"{option_string} is not accepted: a secret on the command line is visible to every user"
                     f" (ps, shell history). Set {SECRET_KEY_ENV} or use --secret-key-file")


def _common(json_output: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("connection")
    group.add_argument("--access-key", default=os.environ.get(ACCESS_KEY_ENV),
                       help=f"ACL access key (default ${ACCESS_KEY_ENV}); the secret comes from ${SECRET_KEY_ENV}"
                            " or --secret-key-file")
    group.add_argument("--secret-key-file", metavar="FILE",
                       help=f"file holding the secret key (instead of ${SECRET_KEY_ENV})")
    group.add_argument("--secret-key", "--secret", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="deadline of one request (default 10)")
    if json_output:
        common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def _scope_args(parser: argparse.ArgumentParser, acl: bool = False) -> None:
    group = parser.add_argument_group("scope (fnmatch patterns, case-sensitive; repeat or comma-separate)")
    group.add_argument("--topics", action="append", metavar="PATTERN", help="topics to include (default *)")
    group.add_argument("--exclude-topics", action="append", metavar="PATTERN", help="topics to leave out")
    group.add_argument("--groups", action="append", metavar="PATTERN", help="consumer groups to include (default *)")
    group.add_argument("--exclude-groups", action="append", metavar="PATTERN", help="groups to leave out")
    if acl:
        group.add_argument("--acl", action="append", metavar="PATTERN",
                           help="ACL principals (access keys, users) to include (default *)")
        group.add_argument("--exclude-acl", action="append", metavar="PATTERN", help="ACL principals to leave out")


def _namesrv_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namesrv", default=os.environ.get(NAMESRV_ENV),
                        help=f"name server(s), host:port[;host:port] (default ${NAMESRV_ENV})")
    parser.add_argument("-c", "--cluster", help="only the brokers of this cluster")


def _expect_brokers_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expect-brokers", metavar="NAMES|FILE",
                        help="broker names that must be registered with a master, comma-separated, or a JSON"
                             " file holding them (a list, or an object with 'brokers' or 'versions', as the"
                             " migration preflight and 'diff --json' write); exit 2 naming any that is not:"
                             " the name server forgets a dead broker, and what it held is unknown")


def expected_brokers(value: str | None) -> list[str]:
    """The --expect-brokers names, from the option itself or the JSON file it names."""
    if not value:
        return []
    path = Path(value)
    if not path.is_file():
        return [name for name in _split([value], ()) if name]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--expect-brokers {value}: not a readable JSON file ({exc})") from None
    if isinstance(data, dict):
        data = data.get("brokers") or sorted(data.get("versions") or {})
    if not isinstance(data, list) or not data or not all(isinstance(n, str) for n in data):
        raise UsageError(f"--expect-brokers {value}: holds no list of broker names")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="RocketMQ migration tool for on-call use: metadata drift, backlog, export/import, clients.",
        epilog="exit codes: 0 done, 1 drift or backlog left (diff, backlog --check), 2 error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("diff", parents=[_common()], allow_abbrev=False,
                            help="metadata differences between two clusters (exit 1 when any)",
                            description="What the target lacks (create), holds differently (update) or holds in"
                                        " addition (delete), under the core's normalisation rules.")
    p.add_argument("--source", required=True, metavar="NAMESRV", help="source name server(s)")
    p.add_argument("--target", required=True, metavar="NAMESRV", help="target name server(s)")
    p.add_argument("--source-cluster", help="only the source brokers of this cluster")
    p.add_argument("--target-cluster", help="only the target brokers of this cluster")
    p.add_argument("--target-access-key", default=os.environ.get(TARGET_ACCESS_KEY_ENV),
                   help=f"the target's access key when it differs (secret: ${TARGET_SECRET_KEY_ENV}"
                        " or --target-secret-key-file)")
    p.add_argument("--target-secret-key-file", metavar="FILE", help="file holding the target's secret key")
    p.add_argument("--target-secret-key", nargs="?", action=_RefuseSecret, help=argparse.SUPPRESS)
    p.add_argument("--no-acl", action="store_true", help="do not read or compare ACL entries")
    _scope_args(p, acl=True)
    p.set_defaults(handler=_cmd_diff)

    p = commands.add_parser("backlog", parents=[_common()], allow_abbrev=False,
                            help="exact backlog of consumer groups, pending system messages included",
                            description="Undelivered messages of the groups (lag and retry per queue) plus the"
                                        " cluster's pending delayed, timer and transactional half messages.")
    _namesrv_arg(p)
    _expect_brokers_arg(p)
    p.add_argument("groups", nargs="*", metavar="GROUP", help="consumer groups")
    p.add_argument("--groups-file", metavar="FILE", help="more groups, one per line ('-' for stdin)")
    p.add_argument("--method", choices=("auto", "per_group", "broker_wide"), default="auto",
                   help="how the broker is asked (same numbers; default auto)")
    p.add_argument("--limit", type=int, default=100, help="rows shown in the table (default 100)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the total backlog is zero")
    p.set_defaults(handler=_cmd_backlog)

    p = commands.add_parser("export", parents=[_common()], allow_abbrev=False,
                            help="write the cluster's topics and groups as mqadmin exportMetadata JSON",
                            description="Topics and groups in scope, in the format of mqadmin exportMetadata -c"
                                        " (queue counts are cluster totals). ACL entries are not exported.")
    _namesrv_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write ('-' for stdout)")
    _scope_args(p)
    p.set_defaults(handler=_cmd_export)

    p = commands.add_parser("import", parents=[_common()], allow_abbrev=False,
                            help="make a cluster hold an exportMetadata file's topics and groups",
                            description="Diff the file against the cluster, plan, and apply idempotently."
                                        " Objects only on the cluster are deleted only with --allow-delete.")
    p.add_argument("file", metavar="FILE", help="exportMetadata JSON (ours or mqadmin's)")
    _namesrv_arg(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--allow-delete", action="store_true",
                   help="also delete topics and groups in scope that the file does not hold")
    _scope_args(p)
    p.set_defaults(handler=_cmd_import)

    p = commands.add_parser("clients", parents=[_common()], allow_abbrev=False,
                            help="consumer and producer connections of groups",
                            description="Who is connected for each group, on every master broker.")
    _namesrv_arg(p)
    _expect_brokers_arg(p)
    p.add_argument("groups", nargs="+", metavar="GROUP", help="consumer and/or producer groups")
    p.add_argument("--role", choices=("consumer", "producer", "both"), default="both",
                   help="which connections to list (default both)")
    p.set_defaults(handler=_cmd_clients)
    return parser


# --- credentials, scope, output ---------------------------------------------------------------

def _read_secret_file(path: str) -> str:
    file = Path(path)
    try:
        mode = file.stat().st_mode
        secret = file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read secret key file {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"{PROG}: warning: secret key file {path} is readable by others (chmod 600 it)", file=sys.stderr)
    if not secret:
        raise UsageError(f"secret key file {path} is empty")
    return secret


def credentials(access_key: str | None, secret_file: str | None, env: str = SECRET_KEY_ENV,
                option: str = "--access-key") -> Credentials | None:
    """The key pair, the secret from a file or the environment; None without an access key."""
    if not access_key:
        if secret_file:
            raise UsageError(f"a secret key file was given without {option}")
        return None
    secret = _read_secret_file(secret_file) if secret_file else os.environ.get(env, "")
    if not secret:
        raise UsageError(f"{option} {access_key} needs a secret: set {env} or use the secret key file option")
    return Credentials(access_key, secret)


def _split(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if values is None:
        return default
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def scope_of(args: argparse.Namespace) -> Scope:
    return Scope(topics=_split(args.topics, ("*",)), exclude_topics=_split(args.exclude_topics, ()),
                 groups=_split(args.groups, ("*",)), exclude_groups=_split(args.exclude_groups, ()),
                 acl=_split(getattr(args, "acl", None), ("*",)),
                 exclude_acl=_split(getattr(args, "exclude_acl", None), ()))


def _namesrv(args: argparse.Namespace) -> str:
    if not args.namesrv:
        raise UsageError(f"no name server: pass -n host:port or set {NAMESRV_ENV}")
    return args.namesrv


def _admin(namesrv: str, creds: Credentials | None, args: argparse.Namespace) -> ClusterAdmin:
    return ClusterAdmin(namesrv, creds, timeout=args.timeout, connect_timeout=min(args.timeout, 3.0))


def table(rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _snapshot_info(snap: ClusterSnapshot, namesrv: str, scoped: ClusterSnapshot) -> dict[str, Any]:
    return {"namesrv": namesrv, "cluster": snap.cluster, "versions": snap.versions,
            "topics_in_scope": len(scoped.topics), "groups_in_scope": len(scoped.groups)}


# --- diff -------------------------------------------------------------------------------------

def _cmd_diff(args: argparse.Namespace) -> int:
    source_creds = credentials(args.access_key, args.secret_key_file)
    target_creds = (credentials(args.target_access_key, args.target_secret_key_file, TARGET_SECRET_KEY_ENV,
                                "--target-access-key")
                    if args.target_access_key or args.target_secret_key_file else source_creds)
    scope = scope_of(args)

    async def _go() -> tuple[ClusterSnapshot, ClusterSnapshot]:
        async with _admin(args.source, source_creds, args) as src, _admin(args.target, target_creds, args) as tgt:
            return await gather_all(take_snapshot(src, args.source_cluster, not args.no_acl),
                                        take_snapshot(tgt, args.target_cluster, not args.no_acl))

    source, target = asyncio.run(_go())
    result: MetadataDiff = diff(source, target, scope)
    info = {"source": _snapshot_info(source, args.source, source.scoped(scope)),
            "target": _snapshot_info(target, args.target, target.scoped(scope))}
    if args.json:
        _print_json({**info, **result.to_dict()})
    else:
        for side in ("source", "target"):
            i = info[side]
            versions = ", ".join(f"{b} {v}" for b, v in sorted(i["versions"].items())) or "?"
            print(f"{side}: {i['namesrv']} ({versions}): {i['topics_in_scope']} topic(s),"
                  f" {i['groups_in_scope']} group(s) in scope")
        print(result.render(), end="")
    return EXIT_OK if result.empty else EXIT_DRIFT


# --- backlog ----------------------------------------------------------------------------------

def _groups_from_file(path: str) -> list[str]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read groups file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _cmd_backlog(args: argparse.Namespace) -> int:
    creds = credentials(args.access_key, args.secret_key_file)
    groups = list(args.groups) + (_groups_from_file(args.groups_file) if args.groups_file else [])
    if not groups:
        raise UsageError("no consumer group given (positional GROUP or --groups-file)")

    async def _go():
        async with _admin(_namesrv(args), creds, args) as admin:
            return await measure_backlog(admin, groups, args.cluster, method=args.method,
                                         expected_brokers=expected_brokers(args.expect_brokers))

    report = asyncio.run(_go())
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.render(limit=args.limit))
    return EXIT_DRIFT if args.check and report.total else EXIT_OK


# --- export / import --------------------------------------------------------------------------

def _cmd_export(args: argparse.Namespace) -> int:
    creds = credentials(args.access_key, args.secret_key_file)
    scope = scope_of(args)

    async def _go() -> ClusterSnapshot:
        async with _admin(_namesrv(args), creds, args) as admin:
            return await take_snapshot(admin, args.cluster, include_acl=False)

    snap = asyncio.run(_go()).scoped(scope)
    document = snap.to_export()
    summary = {"file": args.output, "namesrv": args.namesrv, "cluster": args.cluster, "versions": snap.versions,
               "topics": len(snap.topics), "groups": len(snap.groups), "exportTime": document["exportTime"]}
    if args.output == "-":
        print(json.dumps(document, indent=2, sort_keys=True))
        return EXIT_OK
    path = Path(args.output)
    try:
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if args.json:
        _print_json(summary)
    else:
        print(f"exported {summary['topics']} topic(s) and {summary['groups']} group(s) from {args.namesrv}"
              f" to {path}")
    return EXIT_OK


def render_plan(plan: Plan) -> str:
    if plan.empty:
        lines = ["nothing to do: the cluster already holds everything in scope"]
    else:
        rows: list[Sequence[object]] = [("STEP", "OP", "KIND", "NAME", "DETAILS")]
        rows += [(i, a.op, a.kind, a.name, a.to_dict()["summary"]) for i, a in enumerate(plan.actions, 1)]
        counts = {op: sum(1 for a in plan.actions if a.op == op) for op in ("create", "update", DELETE)}
        lines = [table(rows), f"{len(plan.actions)} action(s): " + ", ".join(f"{n} {op}" for op, n in counts.items())]
    if plan.skipped:
        lines.append(f"{len(plan.skipped)} delete(s) skipped (only on the cluster; pass --allow-delete to delete):")
        lines += [f"  {c.kind} {c.name}" for c in plan.skipped]
    return "\n".join(lines)


def render_result(result: PlanResult) -> str:
    rows: list[Sequence[object]] = [("RESULT", "OP", "KIND", "NAME")]
    rows += [("applied", a.op, a.kind, a.name) for a in result.applied]
    rows += [("unchanged", a.op, a.kind, a.name) for a in result.unchanged]
    lines = [table(rows)] if len(rows) > 1 else []
    lines.append(f"applied {len(result.applied)}, already in place {len(result.unchanged)},"
                 f" deletes skipped {len(result.skipped)}; verified by a fresh read")
    lines += [f"  skipped delete {c.kind} {c.name} (pass --allow-delete)" for c in result.skipped]
    return "\n".join(lines)


def _cmd_import(args: argparse.Namespace) -> int:
    creds = credentials(args.access_key, args.secret_key_file)
    try:
        wanted = ClusterSnapshot.load(args.file)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    scope = scope_of(args)

    async def _go() -> tuple[Plan, PlanResult | None]:
        async with _admin(_namesrv(args), creds, args) as admin:
            current = await take_snapshot(admin, args.cluster, include_acl=False)
            plan = make_plan(diff(wanted, current, scope), allow_delete=args.allow_delete)
            plan.validate()
            if args.dry_run:
                return plan, None
            return plan, await apply_plan(plan, admin, args.cluster)

    plan, result = asyncio.run(_go())
    if args.json:
        _print_json({"dry_run": args.dry_run, "plan": plan.to_dict(),
                     "result": result.to_dict() if result is not None else None})
    elif result is None:
        print(f"plan for {args.namesrv} (dry run, nothing changed):")
        print(render_plan(plan))
    else:
        print(render_result(result))
    return EXIT_OK


# --- clients ----------------------------------------------------------------------------------

def _client_dict(client: ClientConnection, brokers: list[str]) -> dict[str, Any]:
    return {"client_id": client.client_id, "address": client.client_addr, "language": client.language,
            "version": client.version, "brokers": brokers}


def _merge_clients(per_broker: list[tuple[str, Sequence[ClientConnection]]]) -> list[dict[str, Any]]:
    """One entry per client id, naming every broker it is connected to."""
    merged: dict[str, tuple[ClientConnection, list[str]]] = {}
    for broker, clients in per_broker:
        for client in clients:
            merged.setdefault(client.client_id, (client, []))[1].append(broker)
    return [_client_dict(c, sorted(b)) for _, (c, b) in sorted(merged.items())]


def _cmd_clients(args: argparse.Namespace) -> int:
    creds = credentials(args.access_key, args.secret_key_file)

    async def _go() -> dict[str, dict[str, Any]]:
        async with _admin(_namesrv(args), creds, args) as admin:
            masters = [(b.name, b.master) for b in
                       await admin.masters(args.cluster, expected_brokers(args.expect_brokers)) if b.master]
            result: dict[str, dict[str, Any]] = {}
            for group in dict.fromkeys(args.groups):
                entry: dict[str, Any] = {}
                if args.role in ("consumer", "both"):
                    answers = await admin.gather(admin.consumer_connection(addr, group) for _, addr in masters)
                    entry["consumers"] = _merge_clients([(name, a.clients) for (name, _), a in zip(masters, answers)])
                    entry["subscriptions"] = sorted({s for a in answers for s in a.subscriptions})
                    entry["message_model"] = next((a.message_model for a in answers if a.message_model), "")
                    entry["consume_type"] = next((a.consume_type for a in answers if a.consume_type), "")
                if args.role in ("producer", "both"):
                    answers = await admin.gather(admin.producer_connections(addr, group) for _, addr in masters)
                    entry["producers"] = _merge_clients([(name, a) for (name, _), a in zip(masters, answers)])
                result[group] = entry
            return result

    groups = asyncio.run(_go())
    if args.json:
        _print_json({"namesrv": args.namesrv, "cluster": args.cluster, "groups": groups})
        return EXIT_OK
    rows: list[Sequence[object]] = [("ROLE", "GROUP", "CLIENT ID", "ADDRESS", "LANGUAGE", "VERSION", "BROKERS")]
    summary = []
    for group, entry in groups.items():
        for role in ("consumer", "producer"):
            for c in entry.get(role + "s", []):
                rows.append((role, group, c["client_id"], c["address"], c["language"], c["version"],
                             ",".join(c["brokers"])))
        parts = []
        if "consumers" in entry:
            how = "/".join(x for x in (entry["message_model"], entry["consume_type"]) if x)
            parts.append(f"{len(entry['consumers'])} consumer(s) online" + (f" ({how})" if how else "")
                         + (f", subscribed to {', '.join(entry['subscriptions'])}" if entry["subscriptions"] else ""))
        if "producers" in entry:
            parts.append(f"{len(entry['producers'])} producer(s) online")
        summary.append(f"{group}: " + "; ".join(parts))
    if len(rows) > 1:
        print(table(rows))
    print("\n".join(summary))
    return EXIT_OK


# --- entry point ------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 through argparse
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
    except RocketMQError as exc:
        print(f"{PROG} {args.command}: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return EXIT_OK
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
