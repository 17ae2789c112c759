"""One function per CLI verb: parse nothing, print results, return an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass

from .output import need, print_json
from .errors import CaptureUnavailable, TracerError, UsageError
from .model.paths import from_user

# The store modules are imported by the verbs that use them: `provtrace run`
# through the daemon never opens a store, and they cost ~40 ms of its 150 ms
# start-up budget (issue 5).


def _store(args: argparse.Namespace, *, readonly: bool = True):
    from .store import sqlite as S  # noqa: PLC0415

    path = getattr(args, "db", None) or S.default_db_path()
    if path.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"`provtrace {args.verb}` reads a store file; a fleet store (postgresql://) answers "
                         "runs, show, lineage, stale, diff and export (docs/fleet.md)")
    return S.Store(path, readonly=readonly)


def _central(args: argparse.Namespace):
    """The central fleet store when --db (or PROVTRACE_DB) is a postgresql:// URL, else None."""
    from .fleet.db import is_url  # noqa: PLC0415

    url = getattr(args, "db", None) or os.environ.get("PROVTRACE_DB")
    if not is_url(url):
        return None
    need(not getattr(args, "socket", None), "give --db postgresql://... or --socket, not both")
    from .fleet.query import Central  # noqa: PLC0415

    return Central(url)


def _config():
    """The config files' rules, for query verbs: a bad file is a one-line error."""
    from . import config  # noqa: PLC0415

    return config.load()


def _config_lenient():
    """The config for what a capture verb prints after tracing: a bad file is a
    warning, never a failed run (the run is stored either way)."""
    from . import config  # noqa: PLC0415

    return config.load_lenient(lambda msg: print(f"provtrace: warning: {msg}", file=sys.stderr))


def _reclassify(docs: list[dict], config) -> None:
    """A daemon's documents with this user's [classify] rules applied to their files."""
    for f in (f for d in docs for f in d.get("files") or []):
        f["kind"] = config.effective(f["path"], f["kind"])


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render  # noqa: PLC0415

    report = diagnose(load_probes=not args.no_load)
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return 0 if report["usable_backends"] else 1


def cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    need(bool(cmd), "no command given: provtrace run [OPTIONS] -- CMD [ARG...]")
    return _trace(cmd, args).exit_code


@dataclass(frozen=True)
class Traced:
    """A command traced by `_trace`: its exit code, and where its run is stored."""

    exit_code: int
    run_id: str | None  # None: the command ran, but nothing could be recorded
    socket: str | None = None  # the daemon that stored the run; None: the store file (--db)


def _trace(cmd: list[str], args: argparse.Namespace, *, cwd: str | None = None,
           env: dict[str, str] | None = None) -> Traced:
    """Traces cmd the way `provtrace run` does, for `run` and `reproduce` alike: a
    daemon when one answers (see _daemon_socket), root and users alike; else
    standalone: eBPF as root (the probes compiled here), ptrace otherwise.
    cwd and env default to the caller's."""
    root = os.geteuid() == 0
    socket_path = _daemon_socket(args)
    if socket_path is not None:
        # a root caller that the daemon cannot serve loads the probes itself: eBPF
        # either way, so --backend ebpf falls back too
        fallback = ("loading the probes here instead" if root
                    else "tracing with ptrace instead" if args.backend == "auto" else None)
        traced = _run_via_daemon(cmd, socket_path, args, fallback=fallback, cwd=cwd, env=env)
        if traced is not None:
            return traced
    capture, gap_records = _open_capture(args.backend, root)
    from .errors import StoreWriteError  # noqa: PLC0415
    from .pipeline.command import TracedCommand, run_untraced  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415

    try:
        store = _store(args, readonly=False)
    except StoreWriteError as e:  # a full disk: nothing can be recorded, the command still runs
        print(f"provtrace: warning: {e}; the command runs untraced", file=sys.stderr)
        return Traced(run_untraced(cmd, cwd, env), None)
    try:
        _close_abandoned(store)
        tc = TracedCommand(cmd, store=store, label=args.label, cwd=cwd, env=env, capture=capture,
                           gaps=gap_records)
        code = tc.run()
        if tc.store_warning:
            print(f"provtrace: warning: {tc.store_warning}", file=sys.stderr)
        if getattr(args, "json_out", None) and tc.rid is not None:
            _write_json(args.json_out, Q.load_run(store, tc.rid, _config_lenient()))
        if tc.lost and sum(tc.lost.values()):
            print(f"provtrace: warning: {sum(tc.lost.values())} events lost "
                  f"({', '.join(f'{k}={v}' for k, v in tc.lost.items() if v)}); run marked incomplete",
                  file=sys.stderr)
        return Traced(code, None if tc.rid is None or tc.ran_untraced else tc.run_id)
    finally:
        store.close()


def _daemon_socket(args: argparse.Namespace) -> str | None:
    """The daemon socket `provtrace run` hands its command to, or None to trace standalone.

    --socket is always asked. Otherwise the default socket ($PROVTRACE_SOCKET,
    else /run/provtrace/provtrace.sock) is asked when something is there, by
    root as by any user, unless the caller named a store file (--db, or
    $PROVTRACE_DB): the run then goes into that file, traced here. --backend
    ptrace never asks a daemon."""
    if args.backend == "ptrace":
        return None
    if args.socket:
        return args.socket
    if getattr(args, "db", None) or os.environ.get("PROVTRACE_DB"):
        return None
    from .serve.client import default_socket_path  # noqa: PLC0415

    path = default_socket_path()
    return path if os.path.exists(path) else None


def _open_capture(backend: str, root: bool):
    """The capture --backend asks for (capture/base.py open_capture): with
    auto, ptrace when this kernel or host cannot run the probes, said in one
    warning and kept in the run as a gap (docs/kernels.md)."""
    from .capture.base import open_capture  # noqa: PLC0415

    capture, gaps = open_capture(backend, root=root)
    for gap in gaps:
        print(f"provtrace: warning: {gap['detail']}; tracing with ptrace instead", file=sys.stderr)
    return capture, gaps


def _close_abandoned(store) -> None:
    """Runs left open by a writer that died (kill -9, a full disk) are closed,
    incomplete; a store that cannot take it now is left for the next run."""
    import sqlite3  # noqa: PLC0415

    from .errors import StoreError  # noqa: PLC0415
    from .store.recover import close_abandoned  # noqa: PLC0415

    try:
        close_abandoned(store)
    except (StoreError, sqlite3.Error, OSError):
        pass  # never in the way of the command


def _run_via_daemon(cmd: list[str], socket_path: str, args: argparse.Namespace,
                    fallback: str | None, cwd: str | None = None,
                    env: dict[str, str] | None = None) -> Traced | None:
    """The daemon traces CMD on this user's behalf (eBPF), stored under this uid.

    None when the daemon is unreachable, busy or too slow to answer, or its
    socket is refused as untrusted (nothing was sent to it), and a fallback is
    allowed (fallback says what happens instead, for the warning): the command has not started,
    and the caller traces it itself instead, so it always runs (issue 12)."""
    from .serve.client import (ApiError, HandOverFailed, ProvtraceClient, UntrustedDaemon,  # noqa: PLC0415
                             run_command)

    try:  # no Health call first: run_command checks the socket before it forks (start-up: one round trip less)
        result = run_command(cmd, socket_path, cwd=cwd, env=env, label=args.label)
    except (ApiError, HandOverFailed) as e:
        usable_elsewhere = isinstance(e, (HandOverFailed, UntrustedDaemon)) or e.transient
        if fallback and usable_elsewhere:
            print(f"provtrace: warning: {e}; {fallback}", file=sys.stderr)
            return None
        raise
    if result.warning:
        print(f"provtrace: warning: {result.warning}", file=sys.stderr)
    if getattr(args, "json_out", None) and result.run_id:
        with ProvtraceClient(socket_path) as client:
            doc = json.loads(client.export(result.run_id, "json"))
        _reclassify([doc], _config_lenient())
        _write_json(args.json_out, doc)
    return Traced(result.exit_code, result.run_id or None, socket_path)


def cmd_daemon(args: argparse.Namespace) -> int:
    from .store import sqlite as S  # noqa: PLC0415

    from .serve.client import default_socket_path  # noqa: PLC0415
    from .serve.proxy import ConnectionLimits  # noqa: PLC0415
    from .daemon.main import serve  # noqa: PLC0415

    limits = ConnectionLimits(total=args.max_connections, per_uid=args.max_connections_per_user,
                              handshake_s=args.handshake_timeout, idle_s=args.idle_timeout)
    from .daemon.main import AnchorPolicy, OpenLineagePolicy  # noqa: PLC0415

    anchors = AnchorPolicy(args.anchor_log, args.anchor_syslog, args.anchor_every)
    openlineage = OpenLineagePolicy(bool(args.openlineage or args.openlineage_url), args.openlineage_url,
                                    args.openlineage_every)
    ship = None
    if args.ship:
        from .fleet.db import is_url  # noqa: PLC0415
        from .fleet.identity import host_id  # noqa: PLC0415

        need(is_url(args.ship), f"--ship needs a postgresql:// URL, got {args.ship!r}")
        ship = (args.ship, host_id(args.host_id), args.ship_every)
    return serve(args.socket or default_socket_path(), args.db or S.default_db_path(), limits, anchors,
                 openlineage, ship)


def cmd_ship(args: argparse.Namespace) -> int:
    """Copy a store's committed records to the central store, once."""
    from .fleet.db import is_url  # noqa: PLC0415
    from .fleet.identity import host_id  # noqa: PLC0415
    from .fleet.ship import Shipper  # noqa: PLC0415
    from .store import sqlite as S  # noqa: PLC0415

    need(is_url(args.to), f"--to needs a postgresql:// URL, got {args.to!r}")
    db = args.db or S.default_db_path()
    need(not (db.startswith("postgres")), "--db names the local store file to ship from")
    shipper = Shipper(db, args.to, host_id(args.host_id), batch=args.batch)
    try:
        res = shipper.ship(from_seq=args.resend_from)
    finally:
        shipper.close()
    print(f"shipped {db} as host {shipper.host}: {res.accepted} new, {res.duplicates} already held, "
          f"{res.losses} losses noted; central head {res.central_head}, local head {res.local_head}, "
          f"backlog {res.backlog}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet.db import is_url  # noqa: PLC0415

    need(is_url(args.url), f"URL must be postgresql://..., got {args.url!r}")
    if args.fleet_verb == "migrate":
        from .fleet.migrate import latest, migrate  # noqa: PLC0415

        done = migrate(args.url)
        print(f"fleet schema at version {latest()}" + (f" (applied {', '.join(done)})" if done else
                                                       " (nothing to do)"))
        return 0
    from .fleet import query as F  # noqa: PLC0415

    central = F.Central(args.url)
    doc = {"hosts": F.hosts(central), "losses": F.losses(central)}
    if args.json:
        print_json(doc)
        return 0
    for h in doc["hosts"]:
        print(f"{h['host_id']:36} head {h['head_seq']:>10}  backlog {h['backlog'] if h['backlog'] is not None else '?':>8}"
              f"  losses {h['losses']}  last ingest {h['last_ingest']}")
    for loss in doc["losses"]:
        print(f"LOSS {loss['host_id']} records {loss['from']}..{loss['to']}: {loss['reason']} ({loss['detail']})")
    return 1 if doc["losses"] else 0


def cmd_notebook(args: argparse.Namespace) -> int:
    """`notebook run`: the JSON is written even when a cell fails; exit 1 if any failed."""
    code, traced = _trace_notebook(args.notebook, args, kernel=args.kernel, label=args.label)
    result = traced.result
    if args.output and result is not None and result.notebook is not None:
        result.write_notebook(args.output)
    failed = [c for c in (result.cells if result else []) if c.status != "ok"]
    print(f"provtrace: notebook run {traced.run_id}: {len(result.cells) if result else 0} cells, "
          f"{len(failed)} failed" + (f" ({result.stopped_early})" if result and result.stopped_early else ""),
          file=sys.stderr)
    return code


def _trace_notebook(path: str, args: argparse.Namespace, *, kernel: str | None,
                    label: str | None):
    """Runs a notebook traced into the store (--db), for `notebook run` and
    `reproduce`: (exit code, the TracedNotebook, its store closed)."""
    from .store import queries as Q  # noqa: PLC0415

    if os.geteuid() != 0:
        raise CaptureUnavailable("provtrace notebook run traces the kernel with eBPF and needs root "
                                 "(see 'provtrace doctor')")
    from .pipeline.notebook import TracedNotebook  # noqa: PLC0415

    traced = TracedNotebook(path, kernel_name=kernel, label=label,
                            timeout_s=args.timeout, startup_timeout_s=args.startup_timeout,
                            store=_store(args, readonly=False))
    try:
        code = traced.run()
    finally:
        if traced.rid is not None and getattr(args, "json_out", None):
            _write_json(args.json_out, Q.load_run(traced.store, traced.rid, _config_lenient()))
        traced.store.close()
    return code, traced


def _write_json(path: str, doc: dict) -> None:
    """--json-out: written as exports are (atomically, never through a planted symlink)."""
    from .export.exporter import write  # noqa: PLC0415

    write((json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), path)


def _remote_runs(socket_path: str) -> list[dict]:
    from .serve.client import ProvtraceClient  # noqa: PLC0415
    from .clock import iso_utc  # noqa: PLC0415

    with ProvtraceClient(socket_path) as client:
        records = client.list_runs()
    return [{"id": r.id, "kind": r.kind, "label": r.label, "backend": r.backend, "user": r.user,
             "uid": r.uid, "started": iso_utc(r.started) if r.started else None,
             "ended": iso_utc(r.ended) if r.ended else None, "exit_code": r.exit_code,
             "lost_events": None, "complete": None} for r in records]


def _remote_export(socket_path: str, run: str | None, fmt: str) -> bytes:
    from .serve.client import ProvtraceClient  # noqa: PLC0415

    with ProvtraceClient(socket_path) as client:
        return client.export(run, fmt)


def _remote_lineage(socket_path: str, path: str, direction: str, depth: int, **opts) -> dict:
    """The daemon's lineage of path, in the shape `lineage()` gives for a local store."""
    from .serve.client import ProvtraceClient  # noqa: PLC0415

    with ProvtraceClient(socket_path) as client:
        g = client.lineage(path, direction, depth, **opts)
    nodes = [{"id": n.id, "kind": n.kind, **n.detail} for n in g.nodes]
    summary = dict(g.summary)
    # a daemon without file versions (its in-memory store, or an older one) knows no current version
    unknown = {"run": None, "cell": None, "pid": None, "sha256": None, "written": None,
               "changed_outside_tracing": False}
    return {"root": path, "direction": direction, "current": summary.get("current") or unknown, "nodes": nodes,
            "edges": [{"from": e.source, "to": e.target, "rel": e.relation, **e.detail} for e in g.edges],
            "found": summary.get("found", len(nodes) > 1), "truncated": summary.get("truncated", False)}


def cmd_runs(args: argparse.Namespace) -> int:
    from .store import queries as Q  # noqa: PLC0415

    central = _central(args)
    if central is not None:
        from .fleet import query as F  # noqa: PLC0415

        runs, where = F.list_runs(central), central.path
    elif args.socket:
        runs, where = _remote_runs(args.socket), args.socket
    else:
        store = _store(args)
        runs, where = Q.list_runs(store), store.path
    if args.json:
        print_json([{k: v for k, v in r.items() if k != "rid"} for r in runs])
        return 0
    if not runs:
        print(f"no runs in {where}")
        return 0
    fleet = central is not None
    print(("HOST         " if fleet else "") +
          f"{'ID':24} {'KIND':8} {'USER':8} {'STARTED':27} {'EXIT':>4} {'LOST':>5}  LABEL")
    for r in runs:
        print((f"{r['host_id'][:12]:12} " if fleet else "") + f"{r['id']:24} {r['kind']:8} {str(r['user'] or '')[:8]:8} {str(r['started'] or ''):27} "
              f"{'' if r['exit_code'] is None else r['exit_code']:>4} "
              f"{'' if r['lost_events'] is None else r['lost_events']:>5}  {r['label'] or ''}")
    return 0


def _show_links(doc: dict) -> None:
    """The text form of a run's links and directory records (absent from older documents)."""
    if doc.get("links"):
        print("links:")
        for x in doc["links"]:
            arrow = "->" if x["op"] == "symlink" else "=="  # points at / the same file as
            src = x["from"] if x["from"] is not None else "(unnamed O_TMPFILE file)"
            print(f"  pid {x['pid']:>7}  {x['op']:7} {x['to']} {arrow} {src}")
    if doc.get("directories"):
        print("directories:")
        for d in doc["directories"]:
            print(f"  pid {d['pid']:>7}  {d['op']:7} {d['path']}")


def cmd_show(args: argparse.Namespace) -> int:
    from .store import queries as Q  # noqa: PLC0415

    central = _central(args)
    if central is not None:
        from .fleet import query as F  # noqa: PLC0415

        doc = F.load_run(central, *F.resolve_run(central, args.run), _config())
    elif args.socket:
        doc = json.loads(_remote_export(args.socket, args.run, "json"))
        _reclassify([doc], _config())
    else:
        store = _store(args)
        doc = Q.load_run(store, Q.resolve_run(store, args.run), _config())
    if args.json:
        print_json(doc)
        return 0
    run = doc["run"]
    print(f"run {run['id']}  ({run['kind']}, {run['backend']})  label={run['label'] or '-'}"
          + (f"  host={run['host_id']} ({run['host']})" if run.get("host_id") else ""))
    print(f"  argv:     {' '.join(run['argv'] or [])}")
    print(f"  cwd:      {run['cwd']}")
    ended = run["ended"] or ("finishing (fingerprints pending)" if run.get("finishing") else None)
    print(f"  started:  {run['started']}   ended: {ended}   exit: {run['exit_code']}")
    print(f"  complete: {run['complete']}   lost events: {run['lost_events']}")
    for what, n in sorted((run.get("gaps") or {}).items()):  # what was not or could not be traced
        print(f"  gap:      {what}" + (f" (x{n})" if n > 1 else ""))
    print(f"processes ({len(doc['processes'])}):")
    for p in doc["processes"]:
        print(f"  {p['pid']:>7} <- {str(p['ppid']):>7}  exit={p['exit_code']}  {' '.join(p['argv'])[:100]}")
    shown = [f for f in doc["files"] if args.all_files or f["kind"] in ("data", "temp")]
    hidden = len(doc["files"]) - len(shown)
    print(f"files ({len(shown)} shown, {hidden} library/system hidden; --all-files lists them):")
    for f in shown:
        via = f"  (via {', '.join(f['via'])})" if f.get("via") else ""
        changed = "  (changed before it could be hashed)" if f.get("changed_before_hash") else ""
        print(f"  {','.join(f['access']) or '-':24} {f['kind']:7} pid {f['pid']:>7}  {f['path']}{via}{changed}")
    if doc["renames"]:
        print("renames:")
        for r in doc["renames"]:
            print(f"  pid {r['pid']:>7}  {r['from']} -> {r['to']}")
    _show_links(doc)
    if doc["network"]:
        print("network:")
        for n in doc["network"]:
            port = f":{n['port']}" if n["port"] is not None else ""
            print(f"  pid {n['pid']:>7}  {n['op']:7} {n['family']:5} {n['address']}{port}")
    _show_attempts(doc.get("attempts", []), args.attempts)
    if doc["cells"]:
        print(f"cells ({len(doc['cells'])}):")
        for c in doc["cells"]:
            print(f"  [{c.get('execution_count') or ' '}] {str(c.get('index') if c.get('index') is not None else '-'):>3} "
                  f"{c['status']:6} {c['id']}  reads {len(c['reads'])}  writes {len(c['writes'])}  "
                  f"processes {len(c['processes'])}")
            for w in c["writes"]:
                print(f"        wrote {w}")
    return 0


def _show_attempts(attempts: list[dict], listed: bool) -> None:
    """Failed opens: a count by default (they are not accesses), the list with --attempts."""
    if not attempts:
        return
    if not listed:
        print(f"attempts: {len(attempts)} failed opens (--attempts lists them)")
        return
    print(f"attempts ({len(attempts)} failed opens):")
    for a in attempts:
        cell = f"  cell {a['cell']}" if a["cell"] else ""
        print(f"  {a['errno']:7} {a['access']:5} pid {a['pid']:>7}  {a['path']}{cell}")


def cmd_lineage(args: argparse.Namespace) -> int:
    from .lineage.graph import lineage, now_fingerprint, parse_at, render  # noqa: PLC0415

    need(args.depth >= 1, "--depth must be at least 1")
    need(not (args.json and args.format not in (None, "json")), "give --json or --format, not both")
    fmt = "json" if args.json else (args.format or "text")
    direction = args.direction or "upstream"
    at_us = None
    if args.at:
        try:
            at_us = parse_at(args.at)
        except ValueError:
            raise UsageError(f"--at needs an ISO-8601 time (e.g. 2026-12-07T18:30:00Z), got {args.at!r}") from None
    path = os.path.abspath(from_user(args.path))
    if os.path.islink(path):  # capture records reads through a symlink on the file it reached
        path = os.path.realpath(path)
    opts = {"all_versions": args.all_versions, "kernel_state": not args.no_kernel_state}
    central = _central(args)
    if central is not None:
        return _fleet_lineage(central, args, path, direction, at_us, fmt)
    if args.socket:
        need(not args.all_files, "--all-files is for a local store (--db); through --socket, "
             "library and system files show as counts")
        result = _remote_lineage(args.socket, path, direction, args.depth, at=args.at, **opts)
    else:
        now = None if at_us is not None else now_fingerprint(path)
        config = _config()
        result = lineage(_store(args), path, direction, args.depth, at_us=at_us, now=now,
                         config=config, all_files=args.all_files, **opts)
    _write_lineage(result, fmt, args.output, args.max_nodes)
    return 0


def _fleet_lineage(central, args: argparse.Namespace, path: str, direction: str, at_us, fmt: str) -> int:
    """lineage over every host in the central store (text or JSON)."""
    from .export.exporter import write  # noqa: PLC0415
    from .fleet import query as F  # noqa: PLC0415
    from .fleet.identity import host_id  # noqa: PLC0415

    need(fmt in ("text", "json"), "with a postgresql:// store, lineage writes text or json")
    need(not args.all_versions, "--all-versions needs a store file (the fleet store walks paths, not versions)")
    result = F.lineage(central, path, host_id(args.host_id), direction, args.depth, at_us=at_us)
    if fmt == "json" and args.output == "-":
        print_json(result)
        return 0
    text = json.dumps(result, indent=2, ensure_ascii=False) if fmt == "json" else F.render(result)
    write((text + "\n").encode("utf-8", "surrogateescape"), args.output)
    return 0


def _write_lineage(result: dict, fmt: str, dest: str, max_nodes: int) -> None:
    """lineage in one format, to stdout or atomically to a file (pictures: at most max_nodes)."""
    from .export import lineage_picture as P  # noqa: PLC0415
    from .export.exporter import write  # noqa: PLC0415
    from .lineage import graph as G  # noqa: PLC0415

    if fmt == "json":
        if dest == "-":
            print_json(result)
            return
        data = (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape")
    elif fmt in ("svg", "png"):
        data = P.to_image(result, fmt, max_nodes)
    elif fmt == "text":
        data = (G.render(result) + "\n").encode("utf-8", "surrogateescape")
    else:
        text = {"dot": P.to_dot, "mermaid": P.to_mermaid}[fmt](result, max_nodes)
        data = (text if text.endswith("\n") else text + "\n").encode("utf-8", "surrogateescape")
    write(data, dest)


def cmd_diff(args: argparse.Namespace) -> int:
    from .lineage.diff import diff_runs, render_diff  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415

    central = _central(args)
    if central is not None:  # two runs of any hosts
        from .fleet import query as F  # noqa: PLC0415

        config = _config()
        a, b = (F.load_run(central, *F.resolve_run(central, r), config) for r in (args.run_a, args.run_b))
    elif args.socket:
        a, b = (json.loads(_remote_export(args.socket, r, "json")) for r in (args.run_a, args.run_b))
        _reclassify([a, b], _config())
    else:
        store, config = _store(args), _config()
        a = Q.load_run(store, Q.resolve_run(store, args.run_a), config)
        b = Q.load_run(store, Q.resolve_run(store, args.run_b), config)
    d = diff_runs(a, b)
    if args.json:
        print_json(d)
    else:
        print(render_diff(d))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One run or --all, rendered by tracer/export and written to -o (atomically; '-' is stdout)."""
    from .export.exporter import needs_versions, render, write  # noqa: PLC0415
    from .export.versioned import versions_for  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415

    need(bool(args.run) != bool(args.all), "give a RUN or --all (not both): "
         "provtrace export RUN|--all --format FMT -o FILE")
    sending = bool(args.url or args.push)
    need(not sending or args.format == "openlineage", "--url and --push send OpenLineage events: "
         "add --format openlineage")
    need(not (sending and args.output), "give -o FILE to write the export or --url/--push to send it, not both")
    need(sending or bool(args.output), "-o FILE is required (- for stdout); OpenLineage events can instead "
         "be sent with --url URL or --push")
    if sending:
        return _push_openlineage(args)
    if args.socket and not args.data_only:
        write(_remote_export(args.socket, None if args.all else args.run, args.format), args.output)
        return 0
    config = _config()
    versions = None
    central = _central(args)
    if central is not None:  # the fleet's documents (no file versions: docs/fleet.md)
        from .fleet import query as F  # noqa: PLC0415

        keys = [(r["host_id"], r["rid"]) for r in F.list_runs(central)] if args.all \
            else [F.resolve_run(central, args.run)]
        docs = [F.load_run(central, host, rid, config) for host, rid in keys]
    elif args.socket:  # the daemon's documents, cut here: its kinds, then this user's rules
        got = json.loads(_remote_export(args.socket, None if args.all else args.run, "json"))
        docs = got if args.all else [got]
        _reclassify(docs, config)
    else:
        store = _store(args)
        try:
            rids = [r["rid"] for r in Q.list_runs(store)] if args.all else [Q.resolve_run(store, args.run)]
            docs = [Q.load_run(store, rid, config) for rid in rids]
            versions = versions_for(store, docs) if needs_versions(args.format) else None
        finally:
            store.close()
    if args.data_only:
        from .export.select import data_only  # noqa: PLC0415
        from .model.paths import classify  # noqa: PLC0415

        docs = data_only(docs, lambda p: config.effective(p, classify(p)), keep_empty=not args.all)
    write(render(docs, args.format, single=not args.all, versions=versions), args.output)
    return 0


def _push_openlineage(args: argparse.Namespace) -> int:
    """export --format openlineage --url/--push: the spool first, then these runs' events;
    exit 0 when all went, EXIT_SPOOLED (one warning line) when some wait in the spool."""
    from .export import openlineage_push as OP  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415

    client = OP.make_client(args.url)
    if not args.debug:
        OP.quiet_transport_logs()
    config = _config()
    store = None
    try:
        if args.socket:
            def load_doc(run_id: str) -> dict:
                doc = json.loads(_remote_export(args.socket, run_id, "json"))
                _reclassify([doc], config)
                return doc
            runs = [r["id"] for r in _remote_runs(args.socket)] if args.all else [args.run]
            spool = OP.Spool(args.spool or OP.spool_for_user())
        else:
            store = _store(args)

            def load_doc(run_id: str) -> dict:
                return Q.load_run(store, Q.resolve_run(store, run_id), config)
            runs = [r["id"] for r in Q.list_runs(store)] if args.all else [args.run]
            spool = OP.Spool(args.spool or OP.spool_for_store(store.path))
        docs = [load_doc(r) for r in runs]
        if args.data_only:
            from .export.select import data_only  # noqa: PLC0415
            from .model.paths import classify  # noqa: PLC0415

            docs = data_only(docs, lambda p: config.effective(p, classify(p)), keep_empty=not args.all)
        result = OP.push(client, docs, spool, load_doc)
    finally:
        client.close()
        if store is not None:
            store.close()
    where = OP.describe(client, args.url)
    earlier = f" ({result.from_spool} from the spool)" if result.from_spool else ""
    if result.spooled:
        print(f"provtrace: warning: OpenLineage endpoint {where} did not take the events ({result.reason}): "
              f"sent {result.sent}{earlier}, {len(result.spooled)} spooled to {spool.path}; the next push "
              "sends them first", file=sys.stderr)
        return OP.EXIT_SPOOLED
    print(f"provtrace: sent {result.sent} OpenLineage events to {where}{earlier}", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """An environment manifest: to stdout or -o; warnings (one line each) on stderr."""
    from .export import manifests as M  # noqa: PLC0415

    run_ref, cell = M.split_ref(args.run)
    if args.socket:
        context = _remote_context(args.socket, run_ref, cell, M)
    else:
        from .store import queries as Q  # noqa: PLC0415

        store = _store(args)
        try:
            doc = Q.load_run(store, Q.resolve_run(store, run_ref))
        finally:
            store.close()
        context = M.cell_context(doc, cell) if cell else doc.get("context") or {}
    source = args.run
    manifest = M.build(context, args.format, source, hashes=not args.no_hashes, base=args.base)
    M.write(manifest, args.output)
    for warning in manifest.warnings:
        print(f"provtrace: warning: {warning}", file=sys.stderr)
    return 0


def _remote_context(socket_path: str, run: str, cell: str | None, M) -> dict:
    """The daemon's GetContext (only the caller's own runs); a cell's context comes with its
    run's document, which the daemon also gives only to the run's owner."""
    from .serve.client import ProvtraceClient  # noqa: PLC0415

    with ProvtraceClient(socket_path) as client:
        if cell is None:
            return client.context(run)
        return M.cell_context(json.loads(client.export(run, "json")), cell)


REPRODUCE_DIFFERS_EXIT = 4  # reproduce: the re-run differs from the original


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Re-runs RUN under tracing, then compares: 0 reproduced, 4 something differs.

    Exit 4 means a verdict only: a store that cannot be read (4 in other verbs)
    is exit 1 here."""
    import sqlite3  # noqa: PLC0415

    from .errors import StorageCorrupt, StoreError  # noqa: PLC0415

    try:
        return _reproduce(args)
    except (sqlite3.DatabaseError, StorageCorrupt) as e:
        raise StoreError(f"the store cannot be read ({e}); run `provtrace verify` to see what is "
                         "damaged") from e


def _reproduce(args: argparse.Namespace) -> int:
    from .lineage.reproduce import compare, render  # noqa: PLC0415
    from .rerun import plan  # noqa: PLC0415
    from .store import sqlite as S  # noqa: PLC0415

    config = _config()  # a bad config file fails before anything runs
    original = _load_doc(args.run, args.socket, args, config)
    where = args.socket or getattr(args, "db", None) or S.default_db_path()
    rerun = plan(original, caller_uid=os.getuid(), caller_env=os.environ, secret_globs=args.secret_env,
                 db=where)
    if rerun.secrets_missing:
        print(f"provtrace: warning: not restored (secrets, redacted when recorded): "
              f"{', '.join(rerun.secrets_missing)}; --secret-env NAME takes one from your environment",
              file=sys.stderr)
    opts = argparse.Namespace(**{**vars(args), "label": f"reproduce {rerun.run_id}", "json_out": None})
    with _stdout_to_stderr(args.json):  # the re-run's own output never mixes with the JSON
        if rerun.kind == "notebook":
            _, traced = _trace_notebook(rerun.notebook, opts, kernel=rerun.kernel_name, label=opts.label)
            new_id, new_socket = traced.run_id if traced.rid is not None else None, None
        else:
            got = _trace(rerun.argv, opts, cwd=rerun.cwd, env=rerun.env)
            new_id, new_socket = got.run_id, got.socket
    if new_id is None:
        raise TracerError(f"the re-run of {rerun.run_id} could not be recorded (see the warning above); "
                          "there is nothing to compare")
    result = compare(original, _load_doc(new_id, new_socket, args, config), tolerate=args.tolerate,
                     env_restored=rerun.env is not None)
    result["environment"] = {"restored": rerun.env is not None,
                             "variables": len(rerun.env) if rerun.env is not None else None,
                             "secrets_missing": rerun.secrets_missing,
                             "secrets_from_env": rerun.secrets_from_env}
    result["notes"] = rerun.notes + result["notes"]
    if args.json:
        print_json(result)
    else:
        print(render(result), end="")
    return 0 if result["reproduced"] else REPRODUCE_DIFFERS_EXIT


def _load_doc(run: str, socket_path: str | None, args: argparse.Namespace, config) -> dict:
    """One run's provtrace.run/1 document, from a daemon or from the store file (--db)."""
    if socket_path:
        doc = json.loads(_remote_export(socket_path, run, "json"))
        _reclassify([doc], config)
        return doc
    from .store import queries as Q  # noqa: PLC0415

    store = _store(args)
    try:
        return Q.load_run(store, Q.resolve_run(store, run), config)
    finally:
        store.close()


@contextlib.contextmanager
def _stdout_to_stderr(active: bool):
    """While active, file descriptor 1 is stderr's file: what a child prints goes there."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


STALE_EXIT = 3  # --fail-if-stale, when anything is stale


def cmd_stale(args: argparse.Namespace) -> int:
    """Stale or fresh, the exit status is 0: staleness is a finding, not a failure
    (unless --fail-if-stale asks for 3 when anything is stale)."""
    from .lineage.stale import plan, render, render_plan, staleness  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415
    from .store import sqlite as S  # noqa: PLC0415

    headers: dict[str, dict] = {}
    central = _central(args)
    if central is not None:  # every host's runs and cells, judged from what they shipped
        from .fleet import query as F  # noqa: PLC0415
        from .fleet.stale import staleness as fleet_staleness  # noqa: PLC0415

        result = fleet_staleness(central, F.resolve_run(central, args.run) if args.run else None)
        if args.plan:
            headers = {r["id"]: r for r in F.list_runs(central)}
    elif args.socket:
        from .serve.client import ProvtraceClient  # noqa: PLC0415

        with ProvtraceClient(args.socket) as client:
            result = client.stale(args.run)
        if args.plan:
            headers = {r["id"]: r for r in _remote_runs(args.socket)}
    else:
        store = _store(args)
        rid = Q.resolve_run(store, args.run) if args.run else None
        result = staleness(store, rid, config=_config())
        if args.plan:
            headers = {r["id"]: r for r in Q.list_runs(store)}
            for r in headers.values():  # the command line and folder, to re-run it
                row = store.db.execute("SELECT body FROM records WHERE rid=? AND kind=?",
                                       (r["rid"], S.RUN_START)).fetchone()
                r.update({k: json.loads(row[0]).get(k) for k in ("argv", "cwd")} if row else {})
    if args.plan:
        steps = plan(result, headers)
        print_json({"plan": steps}) if args.json else print(render_plan(steps))
    elif args.json:
        print_json(result)
    else:
        print(render(result))
    return STALE_EXIT if args.fail_if_stale and result["stale"] else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Storage first (a damaged index makes every other answer unreliable), then
    the chain, then each anchor."""
    from .store.anchor import anchors_in_log, parse_anchor  # noqa: PLC0415

    anchors = [parse_anchor(a) for a in args.expect_head]
    store = _store(args)
    if args.anchor_log:
        from_log = anchors_in_log(args.anchor_log, store.path)
        need(bool(from_log), f"{args.anchor_log} holds no anchor for {store.path}")
        anchors += from_log
    store.check_storage()
    n = store.verify()
    head, seq = store.head_seq()
    held = [store.check_anchor(a.hash, a.seq) for a in anchors]
    note = f"; {len(held)} anchor(s) hold, the latest at record {max(held)}" if held else ""
    print(f"ok: {n} records, storage intact, chain intact, head {head}@{seq}{note}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report; what it had to leave out is one warning line each."""
    from .atomic import atomic_write  # noqa: PLC0415
    from .export import report  # noqa: PLC0415
    from .store import queries as Q  # noqa: PLC0415

    store = _store(args)
    try:
        result = report.build(store, Q.resolve_run(store, args.run), config=_config())
    finally:
        store.close()
    try:
        atomic_write(args.output, result.html.encode("utf-8", "surrogateescape"))
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}") from None
    for warning in result.warnings:
        print(f"provtrace: warning: {warning}", file=sys.stderr)
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from .store.anchor import anchor_line, sign_ssh  # noqa: PLC0415

    store = _store(args)
    head, seq = store.head_seq()
    line = anchor_line(head, seq, store.path)
    signature = sign_ssh(line + "\n", args.sign_ssh) if args.sign_ssh else None
    if args.json:
        doc = {"head": head, "seq": seq, "db": os.path.abspath(store.path), "line": line}
        if signature:
            doc["ssh_signature"] = {"namespace": "provtrace-head", "signed": line + "\n", "signature": signature}
        print_json(doc)
    else:
        print(line)
        if signature:
            print(signature, end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A traced shell pipeline into the default store, then its lineage."""
    import tempfile  # noqa: PLC0415

    from .store import queries as Q  # noqa: PLC0415
    from .store import sqlite as S  # noqa: PLC0415

    if os.geteuid() != 0:
        raise UsageError("the demo traces with eBPF and needs root: sudo provtrace demo")
    from .lineage.graph import lineage, render  # noqa: PLC0415
    from .pipeline.command import TracedCommand  # noqa: PLC0415

    work = tempfile.mkdtemp(prefix="provtrace-demo-")
    with open(os.path.join(work, "raw.csv"), "w") as f:
        f.write("city,temp\nOslo,3\nLima,19\nCairo,24\nOslo,5\n")
    script = ("grep -v city raw.csv | sort -t, -k2 -n > sorted.csv && "
              "cut -d, -f1 sorted.csv | uniq > cities.tmp && mv cities.tmp cities.txt && "
              "wc -l cities.txt > count.txt")
    store = S.Store(S.default_db_path())
    print(f"demo: tracing  sh -c '{script}'\n      in {work}, store {store.path}\n")
    code = TracedCommand(["sh", "-c", script], store=store, label="demo", cwd=work).run()
    rid = Q.resolve_run(store, "last")
    doc = Q.load_run(store, rid)
    data = [f for f in doc["files"] if f["kind"] in ("data", "temp")]
    print(f"run {doc['run']['id']}: {len(doc['processes'])} processes, {len(doc['files'])} file records "
          f"({len(data)} data), lost events {doc['run']['lost_events']}\n")
    print(render(lineage(store, os.path.join(work, "count.txt"), "upstream", 10)))
    print(f"\nnext: provtrace show {doc['run']['id']}   |   provtrace lineage {work}/raw.csv --downstream")
    store.close()
    return code
