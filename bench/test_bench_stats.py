"""Unit tests of the benchmark's statistics and reporting (no root, no timing assertions)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import configs, hookfloor, measure, report, throughput, workloads


def _sample(wl, cfg, rep, wall, cpu=None, lost=None, exit_code=0, **kw):
    return {"workload": wl, "config": cfg, "rep": rep, "wall_s": wall, "cpu_s": cpu if cpu is not None else wall,
            "lost": lost, "exit_code": exit_code, "timed_out": False, "records": kw.pop("records", None), **kw}


def test_rotated_gives_every_item_each_position():
    items = ["a", "b", "c"]
    orders = [report.rotated(items, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for pos in range(3):
        assert sorted(o[pos] for o in orders) == items
    assert report.rotated([], 5) == []


def test_paired_ratios_pair_by_rep_and_skip_missing():
    base = {0: 1.0, 1: 2.0, 2: 4.0}
    other = {0: 1.5, 2: 4.4, 3: 9.0}
    assert report.paired_ratios(base, other) == pytest.approx([1.5, 1.1])


def test_paired_ratios_offset_never_negative():
    assert report.paired_ratios({0: 1.0}, {0: 0.5}, offset=2.0) == [0.0]


def test_spread_median_min_max_and_empty():
    sp = report.Spread.of([3.0, 1.0, 2.0, None])
    assert (sp.med, sp.min, sp.max) == (2.0, 1.0, 3.0)
    assert report.Spread.of([]) == report.Spread(None, None, None)


def test_summarize_paired_medians_and_failures():
    samples = [
        _sample("stream", "untraced", 0, 1.0), _sample("stream", "untraced", 1, 2.0), _sample("stream", "untraced", 2, 1.0),
        _sample("stream", "strace", 0, 3.0), _sample("stream", "strace", 1, 8.0),
        _sample("stream", "strace", 2, 9.9, exit_code=1, error="exit 1: boom"),
    ]
    rows = report.summarize(samples, ["stream"], ["untraced", "strace", "reprozip"], {"reprozip": "not installed"})
    by = {r["config"]: r for r in rows}
    assert by["untraced"]["wall_ratio"]["med"] == 1.0
    st = by["strace"]
    assert (st["n"], st["n_ok"]) == (3, 2)
    assert st["wall_ratio"] == {"med": 3.5, "min": 3.0, "max": 4.0}  # per-rep ratios 3.0 and 4.0
    assert st["error"] == "exit 1: boom"
    assert by["reprozip"]["unavailable"] == "not installed"
    table = report.format_table(rows)
    assert "3.50 (3.00-4.00)" in table
    assert "not available: not installed" in table
    assert "1 failed: exit 1: boom" in table


def test_summarize_span_ratio_for_provtrace():
    samples = [_sample("exec", "untraced", 0, 1.0),
               _sample("exec", "provtrace-ebpf", 0, 10.0, lost=0, span_s=1.05)]
    rows = report.summarize(samples, ["exec"], ["untraced", "provtrace-ebpf"], {})
    row = [r for r in rows if r["config"] == "provtrace-ebpf"][0]
    assert row["span_ratio"]["med"] == pytest.approx(1.05)
    assert report.overhead_basis(row) == (pytest.approx(1.05), "exec-to-exit span ratio")


def _rows_for(ratio_exec, lost):
    samples = [_sample("exec", "untraced", 0, 1.0),
               _sample("exec", "provtrace-daemon", 0, ratio_exec, lost=lost)]
    return report.summarize(samples, ["exec"], ["untraced", "provtrace-daemon"], {})


def test_targets_met_aim_missed_and_missed():
    checks = report.evaluate_targets(_rows_for(1.05, 0), {}, [], ["provtrace-daemon"], {})
    verdicts = {c["figure"]: c["verdict"] for c in checks}
    assert verdicts["overhead exec (wall ratio)"] == "met target, aim missed"
    assert verdicts["lost events, every workload (max)"] == "met target and aim"
    checks = report.evaluate_targets(_rows_for(1.5, 3), {}, [], ["provtrace-daemon"], {})
    verdicts = {c["figure"]: c["verdict"] for c in checks}
    assert verdicts["overhead exec (wall ratio)"] == "MISSED target"
    assert verdicts["lost events, every workload (max)"] == "MISSED target"
    assert verdicts["start-up of `provtrace run -- true`"] == "MISSED target (not measured)"


def test_targets_unmeasured_say_missed_and_why():
    rows = report.summarize([_sample("exec", "untraced", 0, 1.0)], ["exec"], ["untraced", "provtrace-ebpf"],
                            {"provtrace-ebpf": "provtrace run exited 1: no bcc"})
    checks = report.evaluate_targets(rows, {"provtrace-ebpf": {"median_s": None, "error": "no bcc"}},
                                     [{"mode": "openclose", "config": "provtrace-ebpf", "ceiling_rate": None,
                                       "bound": "no bcc"}], ["provtrace-ebpf"], {"provtrace-ebpf": "no bcc"})
    text = report.format_targets(checks)
    assert all(c["value"] is None for c in checks)
    assert text.count("MISSED target (not measured)") == 1  # one line per config and reason
    for c in checks:
        assert c["figure"] in text
    assert "why: no bcc" in text


def test_targets_ceiling_and_startup_thresholds():
    ceilings = [{"mode": "openclose", "config": "provtrace-ebpf", "ceiling_rate": 500_000, "bound": "loss"},
                {"mode": "read", "config": "provtrace-ebpf", "ceiling_rate": 10, "bound": "loss"}]
    startup = {"provtrace-ebpf": {"median_s": 1.5}, "provtrace-daemon": {"median_s": 0.2}}
    checks = report.evaluate_targets([], startup, ceilings, ["provtrace-ebpf", "provtrace-daemon"], {})
    by = {(c["config"], c["figure"].split(" ")[0]): c["verdict"] for c in checks}
    assert by[("provtrace-ebpf", "zero-loss")] == "met target, aim missed"
    assert by[("provtrace-ebpf", "start-up")] == "met target"
    assert by[("provtrace-daemon", "start-up")] == "MISSED target"
    assert len([c for c in checks if "zero-loss" in c["figure"]]) == 1  # read mode is informative only


def test_provtrace_records_counts_and_span(tmp_path):
    doc = {"schema": "provtrace.run/1", "run": {"lost_events": 2, "complete": False},
           "processes": [{"pid": 2, "started": "2026-01-01T00:00:00.500000Z", "ended": "2026-01-01T00:00:01.000000Z"},
                         {"pid": 1, "started": "2026-01-01T00:00:00.000000Z", "ended": "2026-01-01T00:00:02.250000Z"}],
           "files": [{}, {}, {}], "renames": [{}], "network": []}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    rec = configs.provtrace_records(path)
    assert (rec.emitted, rec.lost, rec.complete) == (6, 2, False)
    assert rec.detail["span_s"] == pytest.approx(2.25)


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    samples = [_sample(w, c, r, 1.0 + (c != "untraced") * (r + 1)) for w in ("a", "b")
               for c in ("untraced", "strace") for r in range(2)]
    rows = report.summarize(samples, ["a", "b"], ["untraced", "strace"], {})
    report.plot(rows, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_skipped_phases_are_not_reported_as_missed():
    checks = report.evaluate_targets([], None, None, ["provtrace-ebpf", "provtrace-daemon"], {})
    assert checks == []


def _provtrace_raw_tracepoints() -> set[str]:
    probes = Path(__file__).resolve().parent.parent / "probes"
    return {m.group(1) for f in probes.glob("*.bpf.c")
            for m in re.finditer(r"RAW_TRACEPOINT_PROBE\((\w+)\)", f.read_text())}


def test_hook_floor_hooks_only_provtrace_raw_tracepoints_with_empty_bodies():
    # The floor must stay on tracepoints provtrace really attaches, or it floors nothing.
    assert "sys_exit" in hookfloor.HOOKS
    assert set(hookfloor.HOOKS) <= _provtrace_raw_tracepoints()
    text = hookfloor.program_text()
    bodies = re.findall(r"RAW_TRACEPOINT_PROBE\((\w+)\)\s*\{([^}]*)\}", text)
    assert [hook for hook, _ in bodies] == list(hookfloor.HOOKS)
    assert all(body.split() == ["return", "0;"] for _, body in bodies)


def test_hook_floor_registered_right_after_bpftrace_floor():
    assert configs.NAMES.index("ebpf-hook-floor") == configs.NAMES.index("bpftrace-floor") + 1
    ctx = configs.Context(workdir=Path("/nonexistent"), python=sys.executable, provtrace="provtrace",
                          allow_install=False)
    assert [c.name for c in configs.build(["ebpf-hook-floor"], ctx)] == ["untraced", "ebpf-hook-floor"]
    assert not configs.HookFloor.ebpf  # the issue's targets are about provtrace, not its floor


def test_hook_floor_unprivileged_fails_with_one_error_line():
    argv = [sys.executable, str(configs.HOOKFLOOR_SCRIPT)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) not found: cannot drop root")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "ready" not in r.stdout
    assert measure.last_line(r.stderr).startswith("hookfloor: ")


def test_reads_cost_is_on_minus_off_and_judged_against_plus_002():
    """Issue 13: provtrace-ebpf's overhead minus provtrace-ebpf-before's, per workload."""
    def row(wl, cfg, wall):
        return {"workload": wl, "config": cfg, "wall_ratio": {"med": wall}}
    row_of = {(r["workload"], r["config"]): r for r in (
        row("imports", "provtrace-ebpf", 1.215), row("imports", "provtrace-ebpf-before", 1.20),
        row("churn", "provtrace-ebpf", 1.30), row("churn", "provtrace-ebpf-before", 1.25),
        row("stream", "provtrace-ebpf", 1.5))}
    checks = {c["figure"].split(",")[1].split()[0]: c for c in report.reads_cost_checks(row_of)}
    assert set(checks) == {"imports", "churn"}, "stream has no before, and is not judged"
    assert abs(checks["imports"]["value"] - 0.015) < 1e-9 and checks["imports"]["verdict"] == "met target"
    assert checks["churn"]["verdict"] == "MISSED target"


def test_capture_off_config_sets_the_environment_of_its_runs():
    names = [c.name for c in configs.ALL]
    assert names.index("provtrace-ebpf-before") == names.index("provtrace-ebpf") + 1
    assert configs.ProvtraceEbpfBefore.env == {"PROVTRACE_CAPTURE_OFF": "failed-opens,dir-reads"}
    assert configs.Config.env == {} and not configs.ProvtraceEbpfBefore.ebpf


# ---------------------------------------------------------------- issue 15


def _rows15(daemon: dict[str, float], floor: dict[str, float], lost: int = 0, standalone: float | None = None):
    """Rows of one rep: untraced wall 1.0, so each wall ratio is the given wall time."""
    samples = []
    for wl in set(daemon) | set(floor):
        samples.append(_sample(wl, "untraced", 0, 1.0))
        if wl in daemon:
            samples.append(_sample(wl, "provtrace-daemon", 0, daemon[wl], lost=lost))
        if wl in floor:
            samples.append(_sample(wl, "ebpf-hook-floor", 0, floor[wl], lost=0))
        if standalone is not None:
            samples.append(_sample(wl, "provtrace-ebpf", 0, standalone, lost=0))
    cfgs = ["untraced", "provtrace-ebpf", "provtrace-daemon", "ebpf-hook-floor"]
    return report.summarize(samples, sorted(set(daemon) | set(floor)), cfgs, {})


def test_issue15_floor_gap_is_daemon_minus_floor_wall_ratio_within_003():
    rows = _rows15({"stream": 1.12, "churn": 1.20}, {"stream": 1.10, "churn": 1.10})
    checks = {c["figure"].split(":")[0]: c for c in report.issue15_checks(rows, None, None, None)}
    assert checks["stream"]["value"] == pytest.approx(0.02)
    assert checks["stream"]["verdict"] == "met target"
    assert checks["churn"]["value"] == pytest.approx(0.10)
    assert checks["churn"]["verdict"] == "MISSED target"
    assert "(1.20 - 1.10)" in checks["churn"]["figure"]
    # every workload of the issue gets a line; the ones not run say so
    assert set(checks) >= set(report.ISSUE15_WORKLOADS)
    assert checks["datawork"]["verdict"] == "MISSED target (not measured)"
    assert checks["datawork"]["why"] == "workload not run in this bench (--workloads)"
    checks = {c["figure"].split(":")[0]: c
              for c in report.issue15_checks(rows, None, None, None, {"notebook": "needs pandas"})}
    assert checks["notebook"]["why"] == "workload skipped: needs pandas"


def test_issue15_floor_gap_names_the_missing_side():
    rows = _rows15({"exec": 1.05}, {})
    check = report.floor_gap_check("exec", {r["config"]: r for r in rows if r["workload"] == "exec"}
                                   ["provtrace-daemon"], None)
    assert check["value"] is None
    assert check["why"] == "ebpf-hook-floor not selected (--configs)"


def test_issue15_datawork_goal_and_standalone_reported():
    rows = _rows15({"datawork": 1.04}, {"datawork": 1.02}, standalone=1.40)
    by = {(c["config"], c["figure"]): c for c in report.issue15_checks(rows, None, None, None)}
    assert by[("provtrace-daemon", "datawork wall ratio")]["verdict"] == "met target"
    assert by[("provtrace-daemon", "datawork wall ratio")]["target"] == "<= 1.05x"
    assert by[("provtrace-ebpf", "datawork wall ratio")]["verdict"] == "reported (no target)"
    assert by[("provtrace-ebpf", "datawork wall ratio")]["value"] == pytest.approx(1.40)
    rows = _rows15({"datawork": 1.09}, {"datawork": 1.02})
    by = {(c["config"], c["figure"]): c for c in report.issue15_checks(rows, None, None, None)}
    assert by[("provtrace-daemon", "datawork wall ratio")]["verdict"] == "MISSED target"


def test_issue15_lost_and_startup_verdicts():
    rows = _rows15({"exec": 1.0}, {"exec": 1.0}, lost=7)
    startup = {"provtrace-daemon": {"median_s": 0.140}, "provtrace-ebpf": {"median_s": 1.6}}
    probe = {"n": 3, "import_s": 0.03, "compile_load_s": 1.2}
    checks = report.issue15_checks(rows, startup, None, probe)
    by = {(c["config"], c["figure"].split(" ")[0]): c for c in checks}
    assert by[("provtrace-daemon", "lost")]["verdict"] == "MISSED target"
    assert by[("provtrace-daemon", "start-up")]["verdict"] == "met target"
    standalone = by[("provtrace-ebpf", "start-up")]
    assert standalone["verdict"] == "reported (no target)"
    assert "1200 ms" in standalone["note"] and "compile and load the probes" in standalone["note"]
    text = report.format_targets(checks)
    assert "1600 ms" in text and "1200 ms" in text
    # the exec row's untraced wall is 1.0 s, so a 140 ms start-up is +0.140 of the gap
    gap = [c for c in checks if c["figure"].startswith("exec:")][0]
    assert "140 ms) is +0.140 of it" in gap["note"]
    startup["provtrace-daemon"]["median_s"] = 0.151
    by = {(c["config"], c["figure"].split(" ")[0]): c for c in report.issue15_checks(rows, startup, None, None)}
    assert by[("provtrace-daemon", "start-up")]["verdict"] == "MISSED target"


def test_issue15_needs_the_daemon_configuration():
    rows = report.summarize([_sample("exec", "untraced", 0, 1.0), _sample("exec", "provtrace-ebpf", 0, 1.1, lost=0)],
                            ["exec"], ["untraced", "provtrace-ebpf"], {})
    assert report.issue15_checks(rows, {}, [], None) == []


def test_offered_verdicts():
    assert report.offered_verdict(1_200_000, 0) == "met target"
    assert report.offered_verdict(1_200_000, 5) == "MISSED target"
    assert report.offered_verdict(600_000, 5) == "MISSED target"  # loss below 1M is a miss all the same
    assert report.offered_verdict(600_000, 0) == "could not offer 1,000,000/s"
    assert report.offered_verdict(None, 0) == "MISSED target (not measured)"
    assert report.offered_verdict(1_500_000, None) == "MISSED target (not measured)"


def test_offered_check_says_when_the_machine_could_not_offer_1m():
    flood = {"config": "provtrace-daemon", "mode": "openclose", "procs": 2, "offered_rate": 640_000.0,
             "untraced_rate": 910_000.0, "lost": 0}
    check = report.offered_check(flood)
    assert check["verdict"] == "could not offer 1,000,000/s"
    assert "this machine could not offer 1,000,000/s" in check["note"]
    assert "the highest rate it offered was 910,000/s" in check["note"]
    text = report.format_targets([check])
    assert "could not offer 1,000,000/s" in text and "640,000/s" in text and "0 lost" in text
    flood.update(offered_rate=1_100_000.0, untraced_rate=1_300_000.0, lost=0)
    check = report.offered_check(flood)
    assert check["verdict"] == "met target" and "could not offer" not in check["note"]
    flood.update(lost=1234)
    check = report.offered_check(flood)
    assert check["verdict"] == "MISSED target" and check["why"] == "1,234 lost at 1,100,000/s"
    check = report.offered_check({"config": "provtrace-ebpf", "offered_rate": None, "lost": None,
                                  "error": "gcc sysgen.c: boom"})
    assert check["verdict"] == "MISSED target (not measured)" and check["why"] == "gcc sysgen.c: boom"


def test_offered_rate_sums_every_generator_or_nothing():
    line = '{"mode": "openclose", "target_rate": 0, "syscalls": 3, "elapsed_s": 1.0, "achieved_rate": %d, "errors": %d}'
    out = "\n".join([line % (400_000, 0), "noise", line % (350_000, 0)])
    assert throughput.offered_rate(out, 2) == 750_000.0
    assert throughput.offered_rate(out, 3) is None  # one generator did not report
    assert throughput.offered_rate("\n".join([line % (400_000, 0), line % (1, 2)]), 2) is None


def test_datawork_is_a_workload_with_issue15_full_sizes(tmp_path):
    assert "datawork" in workloads.NAMES
    assert set(report.ISSUE15_WORKLOADS) <= set(workloads.NAMES)
    assert (workloads.FULL.datawork_files, workloads.FULL.datawork_execs) == (12_000, 150)
    assert workloads.QUICK.datawork_files < workloads.FULL.datawork_files
    wl = workloads.build(["datawork"], tmp_path, workloads.QUICK, sys.executable)[0]
    wl.setup()
    assert wl.command()[-3:] == [str(workloads.QUICK.datawork_rows), str(workloads.QUICK.datawork_files),
                                 str(workloads.QUICK.datawork_execs)]


def test_datawork_program_does_what_it_says(tmp_path):
    root = tmp_path / "t"
    r = subprocess.run([sys.executable, "-I", str(workloads.PROGS), "datawork", str(root), "2000", "300", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    files = sorted(root.glob("s*/store*.txt"))
    assert len(files) == 300
    assert files[0].read_text().startswith("store,")
    top = (root / "top.txt").read_text().split()
    assert len(top) == 16 and set(top[1::2]) == set("ABCDEFGH")  # counts of the 8 products


def test_daemon_config_times_the_run_without_json_out_and_labels_it(tmp_path):
    ctx = configs.Context(workdir=tmp_path, python=sys.executable, provtrace="provtrace", allow_install=False)
    cfg = configs.ProvtraceDaemon(ctx)
    wl = workloads.build(["exec"], tmp_path, workloads.QUICK, sys.executable)[0]
    argv = cfg.argv(wl, tmp_path / "exec-provtrace-daemon-0")
    assert "--json-out" not in argv
    assert argv[:4] == ["provtrace", "run", "--socket", str(cfg.socket)]
    label = argv[argv.index("--label") + 1]
    assert label.startswith("bench:exec-provtrace-daemon-0:") and cfg._label == label
    assert argv[argv.index("--") + 1:] == wl.command()
    # start-up timing: exactly `provtrace run --socket S -- true`, nothing to read back
    argv = cfg.argv(throughput._Command(["true"], tmp_path, records=False), tmp_path)
    assert argv == ["provtrace", "run", "--socket", str(cfg.socket), "--", "true"] and cfg._label is None
