"""GPU capture: the full code path on a FAKE NVML, and the real pynvml with no driver."""

from __future__ import annotations

import logging
import os
import re
from types import SimpleNamespace

import pytest

from provtrace.tracer.context.gpu import GpuProbe


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError (e.g. NVML_ERROR_NOT_SUPPORTED)."""


class FakeNVML:
    """A FAKE NVML module, not a GPU: no NVIDIA GPU or driver is on this machine.

    It answers the pynvml calls GpuProbe makes with scripted values, the way
    pynvml does (bytes names as older bindings return, a CUDA version encoded
    as 12020, per-call NVML errors), so the whole capture path runs in tests.
    """

    def __init__(self, devices: list[dict], driver: str = "535.104.05", cuda: int = 12020) -> None:
        self.devices = devices
        self.driver = driver
        self.cuda = cuda
        self.initialized = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(used=handle["used"], total=handle["total"],
                               free=handle["total"] - handle["used"])

    def nvmlDeviceGetUtilizationRates(self, handle: dict) -> SimpleNamespace:
        if handle.get("util") is None:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=handle["util"][0], memory=handle["util"][1])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict) -> list:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in handle.get("compute", [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: dict) -> list:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in handle.get("graphics", [])]


class FailingNVML(FakeNVML):
    """A FAKE NVML whose init fails as pynvml's does with no driver loaded."""

    def nvmlInit(self) -> None:
        raise FakeNVMLError("NVML Shared Library Not Found")


GiB = 1024**3


def two_gpus() -> FakeNVML:
    return FakeNVML([
        {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-11111111-2222-3333-4444-555555555555",
         "used": 3 * GiB, "total": 80 * GiB, "util": (42, 17),
         "compute": [(1001, 2 * GiB), (2002, GiB)], "graphics": [(1001, None)]},
        {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
         "used": 0, "total": 40 * GiB, "util": None, "compute": [(3003, GiB)]},
    ])


def test_fake_nvml_full_path() -> None:
    fake = two_gpus()
    gpus = GpuProbe(fake).devices(pids=[1001, 3003])
    assert fake.initialized
    assert [g["name"] for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    first, second = gpus
    assert first["uuid"] == "GPU-11111111-2222-3333-4444-555555555555"
    assert first["driver_version"] == "535.104.05" and first["cuda_version"] == "12.2"
    assert (first["memory_used_bytes"], first["memory_total_bytes"]) == (3 * GiB, 80 * GiB)
    assert (first["utilization_gpu_percent"], first["utilization_memory_percent"]) == (42, 17)
    # Only the traced pids, from both compute and graphics lists:
    assert first["processes"] == [
        {"pid": 1001, "kind": "compute", "used_memory_bytes": 2 * GiB},
        {"pid": 1001, "kind": "graphics", "used_memory_bytes": None}]
    assert second["processes"] == [{"pid": 3003, "kind": "compute", "used_memory_bytes": GiB}]
    # An unsupported call gives nulls, not a dropped device:
    assert second["utilization_gpu_percent"] is None


def test_fake_nvml_all_holders_without_pid_filter() -> None:
    gpus = GpuProbe(two_gpus()).devices()
    assert sorted(p["pid"] for p in gpus[0]["processes"]) == [1001, 1001, 2002]


def test_sample_is_timestamped() -> None:
    sample = GpuProbe(two_gpus()).sample([2002])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", sample["time"])
    assert sample["gpus"][0]["processes"] == [{"pid": 2002, "kind": "compute",
                                               "used_memory_bytes": GiB}]


def test_close_shuts_nvml_down() -> None:
    fake = two_gpus()
    probe = GpuProbe(fake)
    probe.devices()
    probe.close()
    assert fake.shutdowns == 1


def test_init_failure_gives_empty_and_logs_once(caplog) -> None:
    probe = GpuProbe(FailingNVML([]))
    with caplog.at_level(logging.DEBUG, logger="provtrace.tracer.context.gpu"):
        assert probe.devices([1]) == []
        assert probe.devices([1]) == []
    messages = [r.getMessage() for r in caplog.records if "nvml unavailable" in r.getMessage()]
    assert len(messages) == 1 and "Shared Library Not Found" in messages[0]


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"),
                    reason="an NVIDIA driver is loaded here")
def test_real_pynvml_without_driver_returns_empty(caplog) -> None:
    import pynvml  # the real binding, from nvidia-ml-py

    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()  # proves this really is a no-driver host
    probe = GpuProbe()
    with caplog.at_level(logging.DEBUG, logger="provtrace.tracer.context.gpu"):
        assert probe.devices([os.getpid()]) == []
        assert probe.sample([os.getpid()])["gpus"] == []
    assert probe.unavailable_reason and "nvmlInit failed" in probe.unavailable_reason
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]
