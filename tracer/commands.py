"""One function per CLI verb: parse nothing, print results, return an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .cli import need, print_json
from .errors import CaptureUnavailable, UsageError
from .model.paths import from_user
from .store import queries as Q
from .store import sqlite as S


def _store(args: argparse.Namespace, *, readonly: bool = True) -> S.Store:
    path = getattr(args, "db", None) or S.default_db_path()
    return S.Store(path, readonly=readonly)


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
    if args.backend == "ptrace":
        raise CaptureUnavailable("the ptrace backend is not part of this version yet; "
                                 "use --backend ebpf as root (see 'provtrace doctor')")
    if args.socket or (os.geteuid() != 0 and os.path.exists(os.environ.get(
            "PROVTRACE_SOCKET", "/run/provtrace/provtrace.sock"))):
        raise CaptureUnavailable("tracing through the daemon is not available in this version; "
                                 "run as root to trace with eBPF directly")
    if os.geteuid() != 0:
        raise CaptureUnavailable("eBPF tracing needs root, and the ptrace fallback is not part of "
                                 "this version yet; run as root (see 'provtrace doctor')")
    from .runner import TracedCommand  # noqa: PLC0415

    store = _store(args, readonly=False)
    try:
        tc = TracedCommand(cmd, store=store, label=args.label)
        code = tc.run()
        if args.json_out:
            _write_json(args.json_out, Q.load_run(store, tc.rid))
        if tc.lost and sum(tc.lost.values()):
            print(f"provtrace: warning: {sum(tc.lost.values())} events lost "
                  f"({', '.join(f'{k}={v}' for k, v in tc.lost.items() if v)}); run marked incomplete",
                  file=sys.stderr)
        return code
    finally:
        store.close()


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args)
    runs = Q.list_runs(store)
    if args.json:
        print_json([{k: v for k, v in r.items() if k != "rid"} for r in runs])
        return 0
    if not runs:
        print(f"no runs in {store.path}")
        return 0
    print(f"{'ID':24} {'KIND':8} {'USER':8} {'STARTED':27} {'EXIT':>4} {'LOST':>5}  LABEL")
    for r in runs:
        print(f"{r['id']:24} {r['kind']:8} {str(r['user'] or '')[:8]:8} {str(r['started'] or ''):27} "
              f"{'' if r['exit_code'] is None else r['exit_code']:>4} "
              f"{'' if r['lost_events'] is None else r['lost_events']:>5}  {r['label'] or ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    doc = Q.load_run(store, Q.resolve_run(store, args.run))
    if args.json:
        print_json(doc)
        return 0
    run = doc["run"]
    print(f"run {run['id']}  ({run['kind']}, {run['backend']})  label={run['label'] or '-'}")
    print(f"  argv:     {' '.join(run['argv'] or [])}")
    print(f"  cwd:      {run['cwd']}")
    print(f"  started:  {run['started']}   ended: {run['ended']}   exit: {run['exit_code']}")
    print(f"  complete: {run['complete']}   lost events: {run['lost_events']}")
    print(f"processes ({len(doc['processes'])}):")
    for p in doc["processes"]:
        print(f"  {p['pid']:>7} <- {str(p['ppid']):>7}  exit={p['exit_code']}  {' '.join(p['argv'])[:100]}")
    shown = [f for f in doc["files"] if args.all_files or f["kind"] in ("data", "temp")]
    hidden = len(doc["files"]) - len(shown)
    print(f"files ({len(shown)} shown, {hidden} library/system hidden; --all-files lists them):")
    for f in shown:
        print(f"  {','.join(f['access']) or '-':24} {f['kind']:7} pid {f['pid']:>7}  {f['path']}")
    if doc["renames"]:
        print("renames:")
        for r in doc["renames"]:
            print(f"  pid {r['pid']:>7}  {r['from']} -> {r['to']}")
    if doc["network"]:
        print("network:")
        for n in doc["network"]:
            port = f":{n['port']}" if n["port"] is not None else ""
            print(f"  pid {n['pid']:>7}  {n['op']:7} {n['family']:5} {n['address']}{port}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from .lineage.graph import lineage, render  # noqa: PLC0415

    need(args.depth >= 1, "--depth must be at least 1")
    store = _store(args)
    result = lineage(store, from_user(args.path), args.direction or "upstream", args.depth)
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from .lineage.diff import diff_runs, render_diff  # noqa: PLC0415

    store = _store(args)
    a = Q.load_run(store, Q.resolve_run(store, args.run_a))
    b = Q.load_run(store, Q.resolve_run(store, args.run_b))
    d = diff_runs(a, b)
    if args.json:
        print_json(d)
    else:
        print(render_diff(d))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    n = store.verify()
    print(f"ok: {n} records, chain intact, head {store.head()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A traced shell pipeline into the default store, then its lineage."""
    if os.geteuid() != 0:
        raise UsageError("the demo traces with eBPF and needs root: sudo provtrace demo")
    from .lineage.graph import lineage, render  # noqa: PLC0415
    from .runner import TracedCommand  # noqa: PLC0415

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
