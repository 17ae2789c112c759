"""Resource figures of runs, processes and cells (store/resources.py), the
/proc reader (capture/procusage.py), and the GPU figures: for real with no
GPU here, and through the labelled FAKE NVML of test_context_gpu for the
GPU path."""

from __future__ import annotations

import os
from types import SimpleNamespace

from provtrace.tracer.capture.procusage import proc_usage, usage_delta
from provtrace.tracer.context.gpu import GpuProbe
from provtrace.tracer.model.events import Usage
from provtrace.tracer.store.resources import (attach_gpu_accounting, cell_resources, gpu_peaks, run_resources,
                                              usage_json)

from .test_context_gpu import GiB, two_gpus

T0, T1 = "2026-12-07T10:00:00.000000Z", "2026-12-07T10:00:02.500000Z"


def proc(pid, cell=None, usage=(2_000_000_000, 500_000_000, 100 << 20, 10, 20)):
    return {"pid": pid, "cell": cell, "resources": usage_json(list(usage) if usage else None, T0, T1)}


def test_usage_json_units():
    r = usage_json([1_500_000_000, 250_000, 4096, 7, 9], T0, T1)
    assert r == {"wall_s": 2.5, "cpu_user_s": 1.5, "cpu_system_s": 0.00025, "peak_rss_bytes": 4096,
                 "read_bytes": 7, "written_bytes": 9}
    assert usage_json(None, T0, T1) is None


def test_counters_add_and_peak_is_the_largest():
    ps = [proc(1), proc(2, usage=(1, 1, 300 << 20, 1, 1)), proc(3, usage=None)]
    r = run_resources({"started": T0, "ended": T1}, ps, [], {})
    assert r["cpu_user_s"] == 2.0 and r["read_bytes"] == 11 and r["written_bytes"] == 21
    assert r["peak_rss_bytes"] == 300 << 20
    assert (r["processes_measured"], r["processes"]) == (2, 3)


def test_nothing_measured_is_null_not_zero():
    r = run_resources({"started": T0, "ended": None}, [proc(1, usage=None)], [], {})
    assert r["cpu_user_s"] is None and r["peak_rss_bytes"] is None and r["wall_s"] is None


def test_cell_adds_its_children_and_the_kernels_share():
    cell = {"id": "c1", "started": T0, "ended": T1,
            "context": {"kernel_usage": [1_000_000_000, 0, 200 << 20, 5, 5]}}
    r = cell_resources(cell, [proc(10, "c1"), proc(11, "c2")])
    assert r["cpu_user_s"] == 3.0 and r["processes_measured"] == 2
    assert r["kernel"]["cpu_user_s"] == 1.0 and r["peak_rss_bytes"] == 200 << 20


def test_kernel_shares_count_once():
    """A kernel measured at its exit already holds its cells' CPU: not added twice."""
    cell = {"id": "c1", "started": T0, "ended": T1,
            "context": {"kernel_usage": [1_000_000_000, 0, 1, 0, 0]}}
    cell["resources"] = cell_resources(cell, [])
    kernel = proc(5, None)  # the kernel process: no cell, measured at exit
    assert run_resources({}, [kernel], [cell], {})["cpu_user_s"] == 2.0
    assert run_resources({}, [proc(5, None, usage=None)], [cell], {})["cpu_user_s"] == 1.0


def test_proc_usage_of_this_process():
    u = proc_usage(os.getpid())
    assert u is not None and u.maxrss_bytes > 0 and u.rchar_bytes >= 0
    assert proc_usage(2**22 + 12345) is None  # no such pid: None, no error
    d = usage_delta(Usage(10, 10, 5, 100, 100), Usage(30, 15, 7, 150, 100))
    assert d == Usage(20, 5, 7, 50, 0)
    assert usage_delta(None, d) is None


def test_no_gpu_here_for_real():
    """This machine has no NVIDIA driver: the real probe gives no devices, the figures []."""
    probe = GpuProbe()
    sample = probe.sample([os.getpid()])
    assert sample["gpus"] == [] and probe.unavailable_reason
    assert gpu_peaks([sample, sample]) == []


def test_gpu_peaks_through_the_fake_nvml():
    """FAKE NVML (no GPU here): memory the traced pids held, device utilisation, per GPU."""
    probe = GpuProbe(nvml=two_gpus())
    start, end = probe.sample([1001]), probe.sample([1001, 3003])
    peaks = gpu_peaks([start, end])
    assert [p["index"] for p in peaks] == [0, 1]
    h100, a100 = peaks
    assert h100["memory_peak_bytes"] == 2 * GiB and h100["utilization_peak_percent"] == 42
    assert a100["memory_peak_bytes"] == GiB and a100["utilization_peak_percent"] is None
    assert h100["samples"] == 2


class AccountingNVML:
    """A FAKE NVML (no GPU here) with accounting mode on for GPU 0 only: the
    pynvml accounting calls, answering with scripted per-pid figures."""

    def __init__(self, base, stats: dict[int, SimpleNamespace]) -> None:
        self._base, self.stats = base, stats

    def __getattr__(self, name):
        return getattr(self._base, name)

    def nvmlDeviceGetAccountingMode(self, handle) -> int:
        return 1 if handle["name"].startswith("NVIDIA H100") else 0  # NVML_FEATURE_ENABLED

    def nvmlDeviceGetAccountingPids(self, handle) -> list[int]:
        return list(self.stats)

    def nvmlDeviceGetAccountingStats(self, handle, pid) -> SimpleNamespace:
        return self.stats[pid]


def test_gpu_accounting_per_process_through_the_fake_nvml():
    stats = {4242: SimpleNamespace(maxMemoryUsage=3 * GiB, gpuUtilization=87, memoryUtilization=40,
                                   startTime=1_765_101_601_000_000),
             777: SimpleNamespace(maxMemoryUsage=2**64 - 1, gpuUtilization=5, memoryUtilization=1,
                                  startTime=None)}
    probe = GpuProbe(nvml=AccountingNVML(two_gpus(), stats))
    acc = probe.accounting([4242, 777, 1])
    assert [(a["index"], a["pid"]) for a in acc] == [(0, 777), (0, 4242)], "GPU 1 has accounting off"
    assert acc[0]["max_memory_bytes"] is None, "NVML_VALUE_NOT_AVAILABLE is null"
    procs = [{"pid": 4242, "cell": "c", "started": "2025-12-07T10:00:00.000000Z",
              "ended": "2025-12-07T10:00:05.000000Z", "resources": usage_json([1, 1, 1, 1, 1], T0, T1)},
             {"pid": 777, "cell": None, "started": None, "ended": None, "resources": None}]
    attach_gpu_accounting(procs, {"gpu_accounting": acc})
    assert procs[0]["resources"]["gpu"] == [{"index": 0, "max_memory_bytes": 3 * GiB,
                                             "gpu_utilization_percent": 87, "memory_utilization_percent": 40}]
    assert procs[1]["resources"] == {"gpu": [{"index": 0, "max_memory_bytes": None,
                                              "gpu_utilization_percent": 5, "memory_utilization_percent": 1}]}
    run = run_resources({}, procs, [], {})
    assert run["processes_measured"] == 1, "a GPU-only entry has no CPU figures"
    (g,) = run["gpu"]
    assert g["process_memory_peak_bytes"] == 3 * GiB and g["process_utilization_peak_percent"] == 87


def test_gpu_accounting_ignores_a_reused_pid():
    acc = [{"index": 0, "pid": 9, "max_memory_bytes": 1, "gpu_utilization_percent": 1,
            "memory_utilization_percent": 1, "start_us": 0}]  # began long before this process
    procs = [{"pid": 9, "started": T0, "ended": T1, "resources": None}]
    attach_gpu_accounting(procs, {"gpu_accounting": acc})
    assert procs[0]["resources"] is None


def test_no_gpu_accounting_here_for_real():
    assert GpuProbe().accounting([os.getpid()]) == []
