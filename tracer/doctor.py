"""`provtrace doctor`: what capture is possible on this host, and why.

Each check says what it found and, when it fails, what to do. The eBPF
backend is usable when we are root, bcc imports, kernel headers are linked
for bcc, BTF and tracefs exist, and the probes compile and load. The ptrace
backend is usable when yama allows tracing a child and a real traced `true`
runs and shows its exec.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict:
    return {"check": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


def diagnose(load_probes: bool = True) -> dict:
    rel = platform.release()
    checks = []
    root = os.geteuid() == 0
    checks.append(_check("root", root, f"euid {os.geteuid()}",
                         "eBPF capture needs root: run as root (sudo)"))
    try:
        import bcc  # noqa: F401, PLC0415

        checks.append(_check("bcc", True, f"bcc {getattr(bcc, '__version__', '?')} importable"))
        have_bcc = True
    except ImportError as e:
        have_bcc = False
        checks.append(_check("bcc", False, f"import failed: {e}",
                             "apt-get install python3-bpfcc; use a venv made with "
                             "/usr/bin/python3 -m venv --system-site-packages (setup.sh does this)"))
    build = f"/lib/modules/{rel}/build"
    target = os.path.realpath(build) if os.path.exists(build) else None
    matching = bool(target and rel in target)
    if target:
        detail = f"{build} -> {target}"
        if not matching:
            detail += (" (Debian headers of another kernel: bcc compiles with them, but their struct "
                       "layouts are wrong here, so provtrace takes every offset from BTF)")
    else:
        detail = f"{build} missing"
    checks.append(_check("kernel headers", target is not None, detail,
                         "run setup.sh: it links Debian's linux-headers-6.1.0-N-amd64 there"))
    arch = platform.machine()
    arch_ok = arch == "x86_64"  # the probes dispatch on x86_64 syscall numbers and registers
    checks.append(_check("architecture", arch_ok, arch,
                         "the eBPF probes know the x86_64 syscall table and registers only"))
    btf_ok = os.path.exists("/sys/kernel/btf/vmlinux")
    checks.append(_check("BTF", btf_ok, "/sys/kernel/btf/vmlinux" + (" present" if btf_ok else " missing"),
                         "needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"))
    offsets_ok = False
    if btf_ok:
        try:
            from .capture.btf import kernel_offsets  # noqa: PLC0415

            offs = kernel_offsets()
            offsets_ok = True
            checks.append(_check("BTF offsets", True, f"{len(offs)} struct offsets read "
                                 f"(task_struct.files at {offs['TASK_FILES']})"))
        except Exception as e:  # noqa: BLE001 - report any parse failure as a finding
            checks.append(_check("BTF offsets", False, str(e), "report this kernel's BTF as unsupported"))
    ringbuf_ok = _ringbuf_check(checks)
    tracefs = os.path.exists("/sys/kernel/tracing/events/syscalls")
    checks.append(_check("tracefs", tracefs, "/sys/kernel/tracing/events/syscalls" + (" present" if tracefs else " missing"),
                         "mount -t tracefs nodev /sys/kernel/tracing (setup.sh does this)"))
    tracepoints_ok = False
    if tracefs:
        checks.append(_tracepoints_check())
        tracepoints_ok = checks[-1]["ok"]
    kprobes = os.path.exists("/sys/kernel/tracing/kprobe_events")
    checks.append(_check("kprobes (not needed)", True,
                         "available" if kprobes else "absent: provtrace uses syscall, sched and raw tracepoints only"))
    lockdown = _read("/sys/kernel/security/lockdown")
    checks.append(_check("lockdown", "[confidentiality]" not in (lockdown or ""),
                         lockdown.strip() if lockdown else "no lockdown file (no lockdown LSM)",
                         "lockdown=confidentiality forbids reading kernel memory from BPF"))
    ebpf_ok = (root and have_bcc and arch_ok and target is not None and btf_ok and offsets_ok
               and ringbuf_ok and tracefs and tracepoints_ok)
    if ebpf_ok and load_probes:
        try:
            from .capture.ebpf import EbpfCapture  # noqa: PLC0415

            cap = EbpfCapture(ringbuf_pages=64)
            bit = cap.calibrate_created_bit()
            cap.close()
            checks.append(_check("probes", True, f"compiled, verified and attached; FMODE_CREATED is 0x{bit:x}"))
        except Exception as e:  # noqa: BLE001 - doctor reports, never crashes
            ebpf_ok = False
            checks.append(_check("probes", False, str(e).splitlines()[0],
                                 "run with --debug for the verifier log"))
    checks.append(_decoder_check())
    ptrace_ok = _ptrace_checks(checks, root)
    usable = (["ebpf"] if ebpf_ok else []) + (["ptrace"] if ptrace_ok else [])
    return {"kernel": rel, "usable_backends": usable, "checks": checks,
            "system": {"os": _os_release(), "packages": debian_packages(target)}}


def _decoder_check() -> dict:
    """Whether the compiled ring-buffer decoder is built (one line either way:
    without it capture still works, decoding in Python)."""
    from .capture.decode import COMPILED  # noqa: PLC0415

    if COMPILED:
        return _check("compiled decoder", True, "capture/_decode.c built: ring-buffer records decoded in C")
    return _check("compiled decoder", False, "not built: records decoded in Python (same records, more "
                  "CPU per event); rebuild with gcc and python3-dev present: bash setup.sh")


def _ringbuf_check(checks: list[dict]) -> bool:
    """The BPF ring buffer (Linux 5.8), asked of the kernel by creating one."""
    from .capture import features  # noqa: PLC0415

    if "ringbuf" in features._assumed_missing():  # noqa: SLF001 - the documented test fake
        checks.append(_check("ring buffer", False, f"reported missing by {features.ASSUME_ENV} (a test fake)",
                             "unset " + features.ASSUME_ENV))
        return False
    have = features.ringbuf_supported()
    if have is None:
        checks.append(_check("ring buffer", True, "not checked: creating a BPF map needs root"))
        return True
    checks.append(_check("ring buffer", have, "BPF_MAP_TYPE_RINGBUF " + ("supported" if have else "not supported"),
                         "the probes send records through the BPF ring buffer (Linux 5.8 or later): "
                         "use --backend ptrace on this kernel"))
    return have


def _tracepoints_check(roots: tuple[str, ...] | None = None) -> dict:
    """The tracepoints the probes attach to, named when missing, and which
    sched_process_exit this kernel has (docs/kernels.md). roots: tracefs mounts."""
    from .capture.ebpf import TRACEFS_ROOTS, TRACEPOINTS, exit_has_group_dead, tracepoint_fields  # noqa: PLC0415

    roots = roots or TRACEFS_ROOTS
    missing = [f"{c}/{n}" for c, n in TRACEPOINTS if tracepoint_fields(c, n, roots) is None]
    if missing:
        return _check("tracepoints", False, "missing: " + ", ".join(missing),
                      "the probes attach to these; this kernel cannot run them (use --backend ptrace)")
    exit_mode = ("sched_process_exit passes group_dead" if exit_has_group_dead(roots) else
                 "sched_process_exit has no group_dead: process exit read from task->signal->live")
    return _check("tracepoints", True, f"{len(TRACEPOINTS)} present; {exit_mode}")


# The apt packages provtrace relies on, beside those found at run time: bcc and
# its Python binding, the LLVM/clang that bcc compiles the probes with (read
# from libbpfcc's own dependencies), the headers linked for bcc, and R.
_BASE_PACKAGES = ("python3-bpfcc", "libbpfcc", "r-base-core", "r-cran-irkernel")


def debian_packages(headers_dir: str | None) -> dict[str, str | None]:
    """Installed version of each apt package provtrace relies on (None: not installed)."""
    from .context.dpkg import DpkgIndex  # noqa: PLC0415

    index = DpkgIndex()
    names = list(_BASE_PACKAGES) + _llvm_packages()
    if headers_dir:
        owner = index.owner(os.path.join(headers_dir, "Makefile"))
        base = os.path.basename(headers_dir)
        guess = base if base.startswith("linux-headers-") else "linux-headers-" + base
        names.append(owner.split(":")[0] if owner else guess)
    return index.versions(names)


def _llvm_packages() -> list[str]:
    try:
        depends = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}", "libbpfcc"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(set(re.findall(r"\b(libllvm\d+|libclang-cpp\d+)\b", depends)))


def _os_release() -> str:
    fields = dict(line.split("=", 1) for line in (_read("/etc/os-release") or "").splitlines() if "=" in line)
    return fields.get("PRETTY_NAME", "unknown").strip('"')


_YAMA = {0: "classic: any process of the same user", 1: "restricted: descendants only "
         "(provtrace traces its own child: fine)", 2: "admin-only: needs CAP_SYS_PTRACE",
         3: "no ptrace at all"}


def _ptrace_checks(checks: list[dict], root: bool) -> bool:
    """Can this user ptrace a child here? The environment, then a real traced `true`."""
    scope_text = _read("/proc/sys/kernel/yama/ptrace_scope")
    scope = int(scope_text) if scope_text and scope_text.strip().isdigit() else None
    notes = [f"yama ptrace_scope={scope} ({_YAMA.get(scope, '?')})" if scope is not None
             else "no yama LSM (ptrace of own children allowed)"]
    status = _read("/proc/self/status") or ""
    mode = next((line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:")), "?")
    if mode == "2":
        notes.append("provtrace itself runs under a seccomp filter (a container runtime's?): "
                     "it may refuse ptrace")
    marker = next((m for m in ("/.dockerenv", "/run/.containerenv") if os.path.exists(m)), None)
    if marker:
        notes.append(f"container marker {marker}: its runtime may forbid ptrace")
    allowed = scope in (None, 0, 1) or (scope == 2 and root)
    checks.append(_check("ptrace permissions", allowed, "; ".join(notes),
                         "sysctl kernel.yama.ptrace_scope=1 (as root), or run provtrace as root"))
    if not allowed:
        return False
    from .capture.ptrace import self_test  # noqa: PLC0415
    from .errors import CaptureUnavailable  # noqa: PLC0415

    try:
        detail = self_test()
    except (CaptureUnavailable, OSError) as e:
        checks.append(_check("ptrace backend", False, str(e),
                             "allow ptrace (container: --cap-add SYS_PTRACE or a seccomp profile "
                             "that permits ptrace), or use eBPF as root"))
        return False
    checks.append(_check("ptrace backend", True, detail + " (x86_64 only)"))
    return True


def render(report: dict) -> str:
    lines = [f"provtrace doctor: kernel {report['kernel']}"]
    for c in report["checks"]:
        mark = "ok  " if c["ok"] else "FAIL"
        lines.append(f"  [{mark}] {c['check']:22} {c['detail']}")
        if c["fix"]:
            lines.append(f"         fix: {c['fix']}")
    system = report.get("system")
    if system:
        lines.append(f"system: {system['os']}; apt packages:")
        for name, ver in system["packages"].items():
            lines.append(f"  {name:28} {ver or 'not installed'}")
    usable = report["usable_backends"]
    lines.append("usable backends: " + (", ".join(usable) if usable else "none"))
    return "\n".join(lines)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
