"""NVIDIA GPUs through NVML: devices, versions, memory, use, and who holds them.

``pynvml`` (from the ``nvidia-ml-py`` package) is the only NVML binding and
is imported lazily, inside ``GpuProbe``; pass ``nvml=`` to inject another
module-like object (tests use a labelled fake). With no NVIDIA driver,
``nvmlInit`` fails: the probe then reports ``[]``, logs once at debug, and
never raises. Per-device calls that a driver does not support (utilization
on some MIG or vGPU setups) give null fields instead of dropping the device.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version(encoded: int | None) -> str | None:
    """NVML encodes CUDA 12.2 as 12020."""
    if not encoded:
        return None
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


class GpuProbe:
    """One NVML session, opened lazily; ``devices()`` is safe to call anywhere."""

    def __init__(self, nvml=None) -> None:
        self._nvml = nvml
        self._ready: bool | None = None  # None: not tried yet
        self.unavailable_reason: str | None = None

    def _init(self) -> bool:
        if self._ready is not None:
            return self._ready
        try:
            if self._nvml is None:
                import pynvml  # imported here: importing provtrace must not need NVML
                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._ready = True
        except ImportError as e:
            self._unavailable(f"pynvml not importable: {e}")
        except Exception as e:  # noqa: BLE001 - NVMLError subclasses vary by driver; any means "no GPU"
            self._unavailable(f"nvmlInit failed: {e}")
        return bool(self._ready)

    def _unavailable(self, reason: str) -> None:
        self._ready = False
        self.unavailable_reason = reason
        log.debug("nvml unavailable reason=%s", reason)

    def close(self) -> None:
        if self._ready:
            try:
                self._nvml.nvmlShutdown()
            except Exception as e:  # noqa: BLE001 - shutdown failures only matter for logging
                log.debug("nvml shutdown failed error=%s", e)
        self._ready = None

    def _call(self, name: str, *args):
        """One NVML call; an NVML error (unsupported, lost GPU) gives None."""
        try:
            return getattr(self._nvml, name)(*args)
        except Exception as e:  # noqa: BLE001 - NVMLError is per-call; record null, keep device
            log.debug("nvml call failed call=%s error=%s", name, e)
            return None

    def _holders(self, handle, pids: set[int] | None) -> list[dict]:
        holders = []
        for kind, call in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                           ("graphics", "nvmlDeviceGetGraphicsRunningProcesses")):
            for proc in self._call(call, handle) or []:
                pid = getattr(proc, "pid", None)
                if pids is not None and pid not in pids:
                    continue
                holders.append({"pid": pid, "kind": kind,
                                "used_memory_bytes": getattr(proc, "usedGpuMemory", None)})
        return holders

    def _device(self, index: int, pids: set[int] | None, driver: str | None,
                cuda: str | None) -> dict:
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            return {"index": index, "error": "nvmlDeviceGetHandleByIndex failed"}
        memory = self._call("nvmlDeviceGetMemoryInfo", handle)
        util = self._call("nvmlDeviceGetUtilizationRates", handle)
        return {
            "index": index,
            "name": _text(self._call("nvmlDeviceGetName", handle)),
            "uuid": _text(self._call("nvmlDeviceGetUUID", handle)),
            "driver_version": driver,
            "cuda_version": cuda,
            "memory_used_bytes": getattr(memory, "used", None),
            "memory_total_bytes": getattr(memory, "total", None),
            "utilization_gpu_percent": getattr(util, "gpu", None),
            "utilization_memory_percent": getattr(util, "memory", None),
            "processes": self._holders(handle, pids),
        }

    def devices(self, pids: Iterable[int] | None = None) -> list[dict]:
        """Every GPU; ``processes`` lists only ``pids`` when given (all holders otherwise)."""
        if not self._init():
            return []
        wanted = set(pids) if pids is not None else None
        count = self._call("nvmlDeviceGetCount") or 0
        driver = _text(self._call("nvmlSystemGetDriverVersion"))
        cuda = _cuda_version(self._call("nvmlSystemGetCudaDriverVersion"))
        return [self._device(i, wanted, driver, cuda) for i in range(count)]

    def sample(self, pids: Iterable[int]) -> dict:
        """A timestamped snapshot, for run/cell start and end."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return {"time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "gpus": self.devices(pids)}

    def accounting(self, pids: Iterable[int]) -> list[dict]:
        """Per-process figures from NVML's accounting, which outlive the process:
        peak GPU memory and utilisation over its life. Only GPUs where an
        administrator enabled accounting mode (``nvidia-smi -am 1``) keep them;
        [] everywhere else, and with no driver."""
        if not self._init():
            return []
        wanted = set(pids)
        out = []
        for index in range(self._call("nvmlDeviceGetCount") or 0):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is None or not self._call("nvmlDeviceGetAccountingMode", handle):
                continue  # NVML_FEATURE_DISABLED (0), or not supported
            for pid in sorted(wanted & set(self._call("nvmlDeviceGetAccountingPids", handle) or [])):
                stats = self._call("nvmlDeviceGetAccountingStats", handle, pid)
                if stats is not None:
                    out.append({"index": index, "pid": pid,
                                "max_memory_bytes": _available(getattr(stats, "maxMemoryUsage", None)),
                                "gpu_utilization_percent": _available(getattr(stats, "gpuUtilization", None)),
                                "memory_utilization_percent":
                                    _available(getattr(stats, "memoryUtilization", None)),
                                "start_us": _available(getattr(stats, "startTime", None))})
        return out


def _available(value: int | None) -> int | None:
    """NVML marks a figure it does not have with all bits set (NVML_VALUE_NOT_AVAILABLE)."""
    if value is None or value < 0 or value >= (1 << 63) or value == 0xFFFFFFFF:
        return None
    return int(value)
