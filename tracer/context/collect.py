"""The one entry point for a run's ``context`` object (provtrace.run/1).

``collect_run_context`` gathers host facts, the ELF objects the run mapped or
executed (plus ``/proc/PID/maps`` of processes still alive), the packages
owning the files it touched, interpreters and compilers, GPUs, and the
redacted environment. It never raises for bad files or missing processes:
per-item problems are recorded in that item's ``error`` field.

Caches (ELF by file identity, dpkg index, Python/R/Julia indexes, compiler
versions) live in a ``ContextCollector``; the module-level functions share
one, created on first use, so later runs are cheap.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .dpkg import DpkgIndex
from .elf import ElfCache, has_elf_magic, looks_like_shared_object
from .gpu import GpuProbe
from .host import host_context
from .interpreters import InterpreterProbe
from .packages import PackageResolver
from .redact import redact_env

log = logging.getLogger(__name__)

_DELETED = " (deleted)"


@dataclass(frozen=True)
class MappedFile:
    """One file-backed mapping from /proc/PID/maps."""

    path: str
    deleted: bool
    map_files_path: str  # /proc/PID/map_files/START-END: opens even a deleted file (root)


def parse_maps(text: str, pid: int) -> list[MappedFile]:
    """File-backed mappings of a /proc/PID/maps text, first mapping of each path."""
    seen: dict[str, MappedFile] = {}
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue  # anonymous, [heap], [vdso] ...
        path = fields[5]
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        if path not in seen:
            seen[path] = MappedFile(path, deleted, f"/proc/{pid}/map_files/{fields[0]}")
    return list(seen.values())


def read_maps(pid: int) -> list[MappedFile]:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            return parse_maps(f.read(), pid)
    except OSError as e:  # exited, or another user's process without privilege
        log.debug("maps unreadable pid=%s error=%s", pid, e)
        return []


def _encode_path(entry: dict) -> dict:
    """Contract rule: a non-UTF-8 path is escaped, with its raw bytes in ``path_b64``."""
    path = entry["path"]
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = path.encode("utf-8", errors="surrogateescape")
        entry["path"] = raw.decode("utf-8", errors="backslashreplace")
        entry["path_b64"] = base64.b64encode(raw).decode("ascii")
    return entry


def _is_library_candidate(path: str) -> bool:
    return looks_like_shared_object(path) or has_elf_magic(path)


class ContextCollector:
    """Long-lived caches behind run context collection; reuse one per daemon."""

    def __init__(self, nvml=None) -> None:
        self.dpkg = DpkgIndex()
        self.elf = ElfCache(self.dpkg)
        self.packages = PackageResolver(self.dpkg)
        self.interpreters = InterpreterProbe()
        self.gpu = GpuProbe(nvml)
        self._lock = threading.Lock()  # the daemon may collect for two runs at once

    def libraries(self, pids: Iterable[int], mapped_paths: Iterable[str],
                  exec_paths: Iterable[str]) -> list[dict]:
        wanted: dict[str, str | None] = {}  # path -> alternative path to open
        for path in [*exec_paths, *mapped_paths]:
            if path and path not in wanted and _is_library_candidate(path):
                wanted[path] = None
        for pid in pids:
            for mapped in read_maps(pid):
                if mapped.path in wanted and wanted[mapped.path] is not None:
                    continue
                if mapped.deleted:
                    if (looks_like_shared_object(mapped.path)
                            or has_elf_magic(mapped.map_files_path)):
                        wanted[mapped.path] = mapped.map_files_path
                elif mapped.path not in wanted and _is_library_candidate(mapped.path):
                    wanted[mapped.path] = None
        entries = []
        for path, open_path in wanted.items():
            entry = _encode_path(self.elf.record(path, open_path))
            if open_path is not None:
                entry["deleted"] = True
                if entry["error"] and entry["error"].startswith("unreadable"):
                    entry["error"] = f"deleted while mapped; {entry['error']}"
            entries.append(entry)
        return entries

    def _context_pid(self, pids: list[int]) -> int | str:
        for pid in pids:
            if os.path.exists(f"/proc/{pid}"):
                return pid
        return "self"

    def collect(self, *, pids: list[int], touched_paths: list[str], mapped_paths: list[str],
                exec_paths: list[str], env: Mapping[str, str] | None,
                gpu_samples: list | None = None) -> dict:
        with self._lock:
            self.packages.refresh()  # also refreshes the dpkg index the ELF cache shares
            return self._collect(pids, touched_paths, mapped_paths, exec_paths, env, gpu_samples)

    def collect_cell(self, *, touched_paths: list[str], mapped_paths: list[str],
                     exec_paths: list[str], env: Mapping[str, str] | None) -> dict:
        """What one cell execution used: libraries it mapped, packages whose files it
        touched, interpreters it exec'd. Host and environment are the run's."""
        with self._lock:
            libraries = self.libraries([], mapped_paths, exec_paths)
            used = [*touched_paths, *mapped_paths, *exec_paths]
            return {
                "libraries": libraries,
                "packages": self.packages.packages_for(used, env),
                "interpreters": self.interpreters.interpreters_for(exec_paths, libraries),
            }

    def _collect(self, pids: list[int], touched_paths: list[str], mapped_paths: list[str],
                 exec_paths: list[str], env: Mapping[str, str] | None,
                 gpu_samples: list | None) -> dict:
        pid = self._context_pid(pids)
        context = host_context(pid, env)
        libraries = self.libraries(pids, mapped_paths, exec_paths)
        used = [*touched_paths, *mapped_paths, *exec_paths, *(lib["path"] for lib in libraries)]
        context.update({
            "limits_pid": pid,
            "interpreters": self.interpreters.interpreters_for(exec_paths, libraries),
            "libraries": libraries,
            "packages": self.packages.packages_for(used, env),
            "gpus": self.gpu.devices(pids),
            "gpu_samples": list(gpu_samples or []),
            "env": redact_env(env),
        })
        log.debug("context collected pid=%s libraries=%d packages=%d", pid,
                  len(libraries), len(context["packages"]))
        return context


_default: ContextCollector | None = None


def default_collector() -> ContextCollector:
    global _default
    if _default is None:
        _default = ContextCollector()
    return _default


def collect_run_context(*, pids: list[int], touched_paths: list[str], mapped_paths: list[str],
                        exec_paths: list[str], env: Mapping[str, str] | None,
                        gpu_samples: list | None = None) -> dict:
    """The contract's ``context`` for one run; see ContextCollector.collect."""
    return default_collector().collect(pids=pids, touched_paths=touched_paths,
                                       mapped_paths=mapped_paths, exec_paths=exec_paths,
                                       env=env, gpu_samples=gpu_samples)


def collect_cell_context(*, touched_paths: list[str], mapped_paths: list[str],
                         exec_paths: list[str], env: Mapping[str, str] | None) -> dict:
    """Per-cell context (see ContextCollector.collect_cell), sharing the run's caches."""
    return default_collector().collect_cell(touched_paths=touched_paths, mapped_paths=mapped_paths,
                                            exec_paths=exec_paths, env=env)


def gpu_sample(pids: list[int]) -> dict:
    """A timestamped GPU snapshot for run/cell start and end; ``gpus`` is [] with no driver."""
    return default_collector().gpu.sample(pids)


def gpu_accounting(pids: list[int]) -> list[dict]:
    """NVML accounting of the run's processes at its end ([] with no driver or accounting off)."""
    return default_collector().gpu.accounting(pids)
