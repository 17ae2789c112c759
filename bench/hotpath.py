"""The decode -> model -> store hot path, measured on recorded ring-buffer batches.

    # once, as root: trace the churn workload and keep its raw batches
    python -m bench.hotpath record --out /tmp/churn.batches [--files 20000]
    # any number of times: replay them into a fresh SQLite store, CPU per stored record
    python -m bench.hotpath replay /tmp/churn.batches [--reps 5] [--profile] [--pure] [--sqlite-floor]

`record` runs the churn workload through `provtrace run`'s own TracedCommand,
with the eBPF capture wrapped so that every batch it hands the consumer (polls,
drains and fd sweeps, in order) is also kept. `replay` feeds those batches
through Decoder -> Tracker -> RunWriter -> Store in a temp dir, the way the run
loop does (decode a batch, settle sweeps and exits, flush every FLUSH_ROWS),
and reports process CPU time (time.process_time) per record in the store.
Replaying recorded bytes takes the kernel, the traced program and the other
tenants of a busy machine out of the figure; min and median of the reps are
printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

from provtrace.tracer.capture.decode import Decoder
from provtrace.tracer.clock import Clock
from provtrace.tracer.model.processes import Tracker
from provtrace.tracer.pipeline.pipeline import FLUSH_ROWS  # the drivers' flush size
from provtrace.tracer.store import sqlite as S
from provtrace.tracer.store.writer import RunWriter

from .workloads import FULL, Churn

FORMAT = "provtrace-hotpath-batches/2"  # 2: sweeps are kept as decoded events


class _Recording:
    """An EbpfCapture that also keeps every batch it hands out, in order."""

    def __init__(self, cap) -> None:
        self._cap = cap
        self.log: list[tuple[str, list[bytes]]] = []
        self.roots: list[tuple[int, int, int]] = []  # (pid, tag, monotonic ns) per trace()

    def __getattr__(self, name):
        return getattr(self._cap, name)

    def spawn(self, exe, argv, env, cwd, tag, started=None) -> int:
        def note(pid: int) -> None:  # before the child may exec: its start
            self.roots.append((pid, tag, Clock.now_mono_ns()))
            if started is not None:
                started(pid)
        return self._cap.spawn(exe, argv, env, cwd, tag, note)

    def _keep(self, what: str, batch: list[bytes]) -> list[bytes]:
        self.log.append((what, list(batch)))
        return batch

    def poll(self, timeout_ms: int) -> list[bytes]:
        return self._keep("batch", self._cap.poll(timeout_ms))

    def drain(self) -> list[bytes]:
        return self._keep("batch", self._cap.drain())

    def drain_batches(self):
        for batch in self._cap.drain_batches():
            yield self._keep("batch", batch)

    def sweep(self, pids: set[int]) -> list:
        return self._keep("sweep", self._cap.sweep(pids))  # decoded events (E.FdIO)


def capture_churn(cap, root: Path, files: int) -> dict:
    """Trace the churn workload (files files, under root) through TracedCommand
    with cap, keeping its batches: the document `replay` takes."""
    from provtrace.tracer.pipeline.command import TracedCommand  # noqa: PLC0415

    sizes = dataclasses.replace(FULL, churn_files=files)
    wl = Churn(root, sizes, sys.executable)
    wl.setup()
    rec = _Recording(cap)
    store = S.Store(str(root / "record.db"), own_dir=False)
    argv = wl.command()
    tc = TracedCommand(argv, store=store, cwd=str(wl.dir), capture=rec)
    code = tc.run()
    store.close()
    if code != 0:
        raise RuntimeError(f"the churn workload exited {code}")
    pid, tag, start_ns = rec.roots[0]
    return {"format": FORMAT, "argv": argv, "cwd": str(wl.dir), "uid": os.getuid(),
            "root": (pid, tag, start_ns), "created_mask": cap.created_mask,
            "offset_ns": Clock().offset_ns, "log": rec.log, "lost": sum(tc.lost.values())}


def record(out: Path, files: int) -> int:
    from provtrace.tracer.capture.ebpf import EbpfCapture  # noqa: PLC0415 - root only

    cap = EbpfCapture()
    try:
        with tempfile.TemporaryDirectory(prefix="provtrace-hotpath-") as tmp:
            doc = capture_churn(cap, Path(tmp), files)
    finally:
        cap.close()
    with open(out, "wb") as f:
        pickle.dump(doc, f, protocol=pickle.HIGHEST_PROTOCOL)
    n = sum(len(b) for _, b in doc["log"])
    print(f"recorded {n} ring-buffer records in {len(doc['log'])} batches ({doc['lost']} lost) -> {out}")
    return 0


def load(path: Path) -> dict:
    with open(path, "rb") as f:
        doc = pickle.load(f)
    if doc.get("format") != FORMAT:
        raise SystemExit(f"hotpath: {path} is not a {FORMAT} file")
    return doc


def replay(doc: dict, db_path: str, compiled: bool | None = None) -> tuple[S.Store, int]:
    """The recorded batches through decode -> Tracker -> RunWriter -> Store at db_path.

    Returns the store (still open) and its run index. The same steps, in the
    same order, as the pipeline (tracer/pipeline/). compiled: as Decoder's."""
    store = S.Store(db_path, own_dir=False)
    clock = Clock(offset_ns=doc["offset_ns"])
    pid, tag, start_ns = doc["root"]
    start_us = (start_ns + clock.offset_ns) // 1000
    rid = store.new_run("hotpath-replay", {"kind": "command", "backend": "ebpf", "start_us": start_us})
    writer = RunWriter(store, rid, clock, base_us=start_us)
    tracker = Tracker(writer, doc["created_mask"])
    decoder = Decoder() if compiled is None else Decoder(compiled)  # (main's Decoder takes no argument)
    tracker.add_root(pid, start_ns, doc["argv"], doc["cwd"], doc["uid"], tag=tag, ppid=1)
    sweeps = [b for what, b in doc["log"] if what == "sweep"]
    gc.freeze()  # as the run loop does: what was loaded before it is not walked again
    try:
        for what, batch in doc["log"]:
            if what != "batch":
                continue
            tracker.handle_all(decoder.decode_all(batch))
            if tracker.needs_sweep:
                tracker.handle_all(sweeps.pop(0) if sweeps else [])
                tracker.needs_sweep.clear()
            tracker.finish_exited()
            if store.pending >= FLUSH_ROWS:
                store.flush()
    finally:
        gc.unfreeze()
    for events in sweeps:  # the sweep after the command ended (events: the capture decodes them)
        tracker.handle_all(events)
    tracker.finish_all(Clock.now_mono_ns())
    gaps = dict(tracker.gaps)
    if decoder.bad:
        gaps["undecodable_records"] = decoder.bad
    store.end_run(rid, {"ended": None, "exit_code": 0, "complete": True, "gaps": gaps,
                        "processes": writer.processes, "files": writer.files})
    return store, rid


def stored_records(store: S.Store, rid: int) -> int:
    return store.db.execute("SELECT count(*) FROM records WHERE rid=?", (rid,)).fetchone()[0]


def measure(doc: dict, reps: int, profile: bool, compiled: bool | None = None) -> list[float]:
    """CPU microseconds per stored record, one figure per rep."""
    per_record = []
    for i in range(reps):
        with tempfile.TemporaryDirectory(prefix="provtrace-hotpath-") as tmp:
            db = os.path.join(tmp, "replay.db")
            if profile and i == 0:
                import cProfile  # noqa: PLC0415
                import pstats  # noqa: PLC0415

                prof = cProfile.Profile()
                store, rid = prof.runcall(replay, doc, db, compiled)
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                store.close()
                continue
            t0 = time.process_time()
            store, rid = replay(doc, db, compiled)
            cpu = time.process_time() - t0
            n = stored_records(store, rid)
            store.close()
        per_record.append(cpu * 1e6 / n)
        print(f"rep {i + 1}: {cpu * 1000:.1f} ms CPU for {n} stored records = "
              f"{cpu * 1e6 / n:.2f} us/record")
    return per_record


def sqlite_floor(doc: dict, reps: int) -> list[float]:
    """CPU microseconds per record that SQLite alone takes to insert the replay's
    rows: its paths and records, already hashed, into a fresh store (same
    schema and pragmas) with one executemany each in one transaction. What no
    change above the store can take away."""
    with tempfile.TemporaryDirectory(prefix="provtrace-hotpath-") as tmp:
        store, rid = replay(doc, os.path.join(tmp, "replay.db"))
        paths = store.db.execute("SELECT id, path FROM paths ORDER BY id").fetchall()
        rows = store.db.execute("SELECT rid, kind, p1, p2, body, hash FROM records WHERE rid=? ORDER BY seq",
                                (rid,)).fetchall()
        store.close()
    out = []
    for i in range(reps):
        with tempfile.TemporaryDirectory(prefix="provtrace-hotpath-") as tmp:
            db = S.Store(os.path.join(tmp, "floor.db"), own_dir=False).db
            t0 = time.process_time()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO paths(id, path) VALUES(?,?)", paths)
            db.executemany("INSERT INTO records(rid, kind, p1, p2, body, hash) VALUES(?,?,?,?,?,?)", rows)
            db.execute("COMMIT")
            cpu = time.process_time() - t0
            db.close()
        out.append(cpu * 1e6 / len(rows))
        print(f"sqlite floor rep {i + 1}: {cpu * 1000:.1f} ms CPU for {len(rows)} records and {len(paths)} "
              f"paths = {out[-1]:.2f} us/record")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("record", help="trace the churn workload once, keep its raw batches (root)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--files", type=int, default=FULL.churn_files)
    p = sub.add_parser("replay", help="replay recorded batches into a temp store; CPU per stored record")
    p.add_argument("batches", type=Path)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile the first rep (not counted)")
    p.add_argument("--pure", action="store_true", help="decode in Python even when the extension is built")
    p.add_argument("--sqlite-floor", action="store_true",
                   help="also time SQLite alone inserting the same rows (the floor under the store)")
    a = ap.parse_args(argv)
    if a.verb == "record":
        return record(a.out, a.files)
    doc = load(a.batches)
    n = sum(len(b) for _, b in doc["log"])
    compiled = False if a.pure else None
    print(f"{a.batches}: {n} ring-buffer records, {len(doc['log'])} batches; decoder: "
          f"{'compiled' if getattr(Decoder(), 'compiled', False) and not a.pure else 'Python'}")
    figures = measure(doc, a.reps + (1 if a.profile else 0), a.profile, compiled)
    if figures:
        print(f"us CPU per stored record: min {min(figures):.2f}, median {statistics.median(figures):.2f} "
              f"({len(figures)} reps)")
    if a.sqlite_floor:
        floor = sqlite_floor(doc, a.reps)
        print(f"us CPU per record in SQLite alone: min {min(floor):.2f}, median {statistics.median(floor):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
