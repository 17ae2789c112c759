"""The host a run executed on: kernel, OS, CPU, memory, container, limits.

All reads are of /proc, /etc and /sys text files; nothing is executed. A
missing or unreadable source gives a null field, never an exception.
Container identity is best-effort: ``/.dockerenv``, ``/run/.containerenv``
(podman), a ``container=`` variable in the traced environment (systemd-nspawn,
podman, lxc), and the process's cgroup paths.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import resource
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
# /proc/PID/limits columns are aligned by spaces; units is optional.
_LIMIT_LINE = re.compile(r"^(?P<name>.+?)\s{2,}(?P<soft>\S+)\s+(?P<hard>\S+)(?:\s+(?P<units>\S+))?\s*$")
_RLIMIT_NAMES = {
    "RLIMIT_CPU": "Max cpu time", "RLIMIT_FSIZE": "Max file size",
    "RLIMIT_DATA": "Max data size", "RLIMIT_STACK": "Max stack size",
    "RLIMIT_CORE": "Max core file size", "RLIMIT_RSS": "Max resident set",
    "RLIMIT_NPROC": "Max processes", "RLIMIT_NOFILE": "Max open files",
    "RLIMIT_MEMLOCK": "Max locked memory", "RLIMIT_AS": "Max address space",
}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        log.debug("host source unreadable path=%s error=%s", path, e)
        return None


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """KEY=value pairs with shell quoting removed; falls back to /usr/lib/os-release."""
    text = _read(path)
    if text is None and path == "/etc/os-release":
        text = _read("/usr/lib/os-release")
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key and not key.startswith("#"):
            fields[key] = value.strip().strip("\"'")
    return fields


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    text = _read(cpuinfo_path) or ""
    model = None
    packages_cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware", "cpu model") and model is None:
            model = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not line.strip() and physical is not None and core is not None:
            packages_cores.add((physical, core))
            physical = core = None
    if physical is not None and core is not None:
        packages_cores.add((physical, core))
    return {
        "model": model or platform.processor() or None,
        "count": os.cpu_count(),
        "physical_cores": len(packages_cores) or None,
    }


def memory_bytes(meminfo_path: str = "/proc/meminfo") -> int | None:
    for line in (_read(meminfo_path) or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024  # /proc/meminfo's "kB" is KiB
    return None


def cgroups(pid: int | str = "self") -> list[dict]:
    """Lines of /proc/PID/cgroup as {hierarchy, controllers, path}."""
    entries = []
    for line in (_read(f"/proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            entries.append({"hierarchy": parts[0],
                            "controllers": [c for c in parts[1].split(",") if c],
                            "path": parts[2]})
    return entries


def container(pid: int | str = "self", env: Mapping[str, str] | None = None) -> dict | None:
    """What kind of container this is, and its id where the cgroup path shows one."""
    runtime = None
    if os.path.exists("/.dockerenv"):
        runtime = "docker"
    elif os.path.exists("/run/.containerenv"):
        runtime = "podman"
    elif env and env.get("container"):
        runtime = env["container"]
    container_id = None
    for entry in cgroups(pid):
        m = _CONTAINER_ID.search(entry["path"])
        if m:
            container_id = m.group(1)
            runtime = runtime or "unknown"
            break
    if runtime is None:
        return None
    return {"runtime": runtime, "id": container_id}


def _limit_value(text: str) -> int | None:
    return None if text == "unlimited" else int(text) if text.isdigit() else None


def rlimits(pid: int | str = "self") -> dict[str, dict] | None:
    """Resource limits of a process: ``{name: {soft, hard, units}}``; null = unlimited."""
    text = _read(f"/proc/{pid}/limits")
    if text is None:
        return _own_rlimits() if pid in ("self", os.getpid()) else None
    limits = {}
    for line in text.splitlines()[1:]:
        m = _LIMIT_LINE.match(line)
        if m:
            limits[m.group("name")] = {"soft": _limit_value(m.group("soft")),
                                       "hard": _limit_value(m.group("hard")),
                                       "units": m.group("units")}
    return limits


def _own_rlimits() -> dict[str, dict]:
    limits = {}
    for const, label in _RLIMIT_NAMES.items():
        if hasattr(resource, const):
            soft, hard = resource.getrlimit(getattr(resource, const))
            limits[label] = {"soft": None if soft == resource.RLIM_INFINITY else soft,
                             "hard": None if hard == resource.RLIM_INFINITY else hard,
                             "units": None}
    return limits


def host_context(pid: int | str = "self", env: Mapping[str, str] | None = None) -> dict:
    """Host facts for the contract's context (host, kernel, cpu, memory_bytes) plus extras."""
    uname = os.uname()
    release = os_release()
    return {
        "host": socket.gethostname(),
        "kernel": uname.release,
        "kernel_version": uname.version,
        "arch": uname.machine,
        "os_release": {k: release[k] for k in ("ID", "VERSION_ID", "PRETTY_NAME", "VERSION_CODENAME")
                       if k in release},
        "cpu": cpu_info(),
        "memory_bytes": memory_bytes(),
        "container": container(pid, env),
        "cgroup": cgroups(pid),
        "rlimits": rlimits(pid),
    }
