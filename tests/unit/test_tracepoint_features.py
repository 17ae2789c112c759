"""Which sched_process_exit the kernel has decides how the exit probe finds a
whole-process exit (vm/run-matrix found 6.12 refusing the two-argument read)."""

from __future__ import annotations

from provtrace.tracer.capture import ebpf

FORMAT_6_18 = """name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: "comm=%s pid=%d prio=%d group_dead=%s", REC->comm, REC->pid, REC->prio, REC->group_dead ? "true" : "false"
"""
FORMAT_6_12 = FORMAT_6_18.replace("\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n", "")


def _tracefs(tmp_path, text):
    d = tmp_path / "events" / "sched" / "sched_process_exit"
    d.mkdir(parents=True)
    (d / "format").write_text(text)
    return (str(tmp_path),)


def test_fields_of_a_tracepoint(tmp_path):
    roots = _tracefs(tmp_path, FORMAT_6_18)
    assert ebpf.tracepoint_fields("sched", "sched_process_exit", roots) >= {"comm", "pid", "prio", "group_dead"}
    assert ebpf.tracepoint_fields("sched", "no_such_tracepoint", roots) is None


def test_group_dead_argument_detected_both_ways(tmp_path):
    assert ebpf.exit_has_group_dead(_tracefs(tmp_path / "new", FORMAT_6_18))
    assert not ebpf.exit_has_group_dead(_tracefs(tmp_path / "old", FORMAT_6_12))
    assert not ebpf.exit_has_group_dead((str(tmp_path / "unmounted"),))


def test_doctor_names_a_missing_tracepoint_and_the_exit_mode(tmp_path):
    from provtrace.tracer.doctor import _tracepoints_check

    for category, name in ebpf.TRACEPOINTS:
        d = tmp_path / "events" / category / name
        d.mkdir(parents=True)
        (d / "format").write_text(FORMAT_6_12 if name == "sched_process_exit" else "format:\n")
    roots = (str(tmp_path),)
    check = _tracepoints_check(roots)
    assert check["ok"] and "no group_dead" in check["detail"]
    (tmp_path / "events" / "sched" / "sched_process_exec" / "format").unlink()
    check = _tracepoints_check(roots)
    assert not check["ok"] and check["detail"] == "missing: sched/sched_process_exec"
