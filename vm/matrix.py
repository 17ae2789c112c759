"""Boot Debian's kernels under QEMU and run provtrace's privileged tests inside.

`vm/run-matrix [KERNEL...]` (docs/kernels.md). For each kernel of
vm/kernels.toml: fetch its image and headers packages from Debian's archive
with a private apt list (nothing is installed on this host), build a busybox
initramfs, boot the guest under TCG with this machine's root shared read-only
under a tmpfs overlay, give bcc the guest kernel's own headers, run the
kernel's test suite, and read the result back through a read-write job share.
A kernel that cannot be fetched, hangs or panics is one line in the table,
with its serial log kept; the matrix goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_MATRIX = os.path.join(HERE, "kernels.toml")
DEFAULT_CACHE = "/var/cache/provtrace-vm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
BUSYBOX = "/bin/busybox"
# What the guest needs to mount its shares, per share method (module names;
# built-in ones are skipped). overlay puts a tmpfs over the read-only root.
SHARE_MODULES = {
    "9p": ["virtio_pci", "9pnet_virtio", "9p", "overlay"],
    "virtiofs": ["virtio_pci", "virtiofs", "overlay"],
}
# host tools -> the Debian package that provides them
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    BUSYBOX: "busybox-static",
    "depmod": "kmod",
    "zstd": "zstd",
}
APT_LIST_MAX_AGE_S = 24 * 3600


class MatrixError(Exception):
    """A one-line problem with the matrix file, the command line or the host."""


class KernelError(Exception):
    """One kernel could not be proven: `kind` is the table's result column."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass
class Kernel:
    name: str
    tests: list[str]  # pytest arguments, from its suite
    native: bool = False
    suite: str = ""
    image: str = ""
    headers: str = ""
    share: str = "9p"
    memory_mb: int = 2048
    cpus: int = 2
    timeout_s: int = 900
    mirror: str = "http://deb.debian.org/debian"
    command: str = ""  # a shell command to run instead of the tests (--command)


@dataclasses.dataclass
class Result:
    name: str
    release: str = "-"
    result: str = "pass"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    note: str = ""


def log(name: str, msg: str) -> None:
    print(f"[{name}] {msg}", file=sys.stderr, flush=True)


# --- the matrix file ---------------------------------------------------------

def load_matrix(path: str) -> tuple[dict[str, Kernel], dict[str, list[str]]]:
    """Kernels of the matrix file by name, in file order, and its test suites'
    pytest arguments by name; MatrixError if malformed."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise MatrixError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(f"{path}: {e}") from None
    defaults = doc.get("defaults", {})
    suites = doc.get("suite", {})
    kernels: dict[str, Kernel] = {}
    for name, spec in doc.get("kernel", {}).items():
        where = f"{path}: kernel {name!r}"
        suite_name = spec.get("tests")
        if suite_name not in suites or not isinstance(suites[suite_name].get("pytest"), list):
            raise MatrixError(f"{where}: tests = {suite_name!r} names no [suite.NAME] with a pytest list")
        k = Kernel(name=name, tests=[str(a) for a in suites[suite_name]["pytest"]],
                   native=bool(spec.get("native", False)))
        for field in ("memory_mb", "cpus", "timeout_s", "mirror"):
            setattr(k, field, spec.get(field, defaults.get(field, getattr(k, field))))
        if not k.native:
            for field in ("suite", "image", "headers"):
                if not isinstance(spec.get(field), str) or not spec[field]:
                    raise MatrixError(f"{where}: needs {field} = \"...\"")
                setattr(k, field, spec[field])
            k.share = spec.get("share", "9p")
            if k.share not in SHARE_MODULES:
                raise MatrixError(f"{where}: share must be one of {sorted(SHARE_MODULES)}, not {k.share!r}")
        kernels[name] = k
    if not kernels:
        raise MatrixError(f"{path}: no [kernel.NAME] entries")
    return kernels, {n: [str(a) for a in v.get("pytest", [])] for n, v in suites.items()}


# --- host tools --------------------------------------------------------------

def is_static_elf(path: str) -> bool:
    """Whether path is an ELF64 executable without a program interpreter (PT_INTERP):
    the initramfs has no libc, so its busybox must be busybox-static's."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:5] != b"\x7fELF\x02":
                return False
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _have(tool: str) -> bool:
    if tool == BUSYBOX:
        return is_static_elf(BUSYBOX)
    return os.path.exists(tool) if tool.startswith("/") else shutil.which(tool, path=_sbin_path()) is not None


def ensure_host_tools() -> None:
    """Install what booting guests needs on this host, saying so; MatrixError if that fails."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not _have(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise MatrixError(f"missing host packages {' '.join(missing)}: run as root or apt-get install them")
    print(f"run-matrix: installing {' '.join(missing)} (needed to build and boot guests)", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise MatrixError(f"apt-get install {' '.join(missing)} failed: {last}")


def _sbin_path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=_sbin_path())
    return subprocess.run(argv, capture_output=True, text=True, env=env, **kw)


# --- packages ------------------------------------------------------------------

class Apt:
    """apt-get/apt-cache over one Debian suite, with lists of its own under the cache.

    The host's dpkg status is replaced by an empty one so that what the host has
    installed never decides which version is fetched."""

    def __init__(self, cache: str, suite: str, mirror: str):
        self.suite = suite
        self.dir = os.path.join(cache, "apt", suite)
        self.sources = os.path.join(self.dir, "sources.list")
        for sub in ("lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        line = f"deb [signed-by={KEYRING}] {mirror} {suite} main\n"
        if not os.path.exists(self.sources) or open(self.sources).read() != line:
            with open(self.sources, "w") as f:
                f.write(line)
            self._stamp(remove=True)
        open(os.path.join(self.dir, "status"), "a").close()

    def _opts(self) -> list[str]:
        d = self.dir
        return ["-o", f"Dir::Etc::SourceList={self.sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={d}/lists", "-o", f"Dir::Cache={d}/cache",
                "-o", f"Dir::State::status={d}/status", "-o", "APT::Sandbox::User=root",
                "-o", "Debug::NoLocking=1"]

    def _stamp(self, remove: bool = False) -> str:
        p = os.path.join(self.dir, "updated")
        if remove and os.path.exists(p):
            os.unlink(p)
        return p

    def update(self) -> None:
        stamp = self._stamp()
        if os.path.exists(stamp) and time.time() - os.path.getmtime(stamp) < APT_LIST_MAX_AGE_S:
            return
        r = _run(["apt-get", *self._opts(), "-qq", "update"])
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("E:", "Err:"))]
        if r.returncode != 0 or errors:
            raise KernelError("no-package", f"apt-get update for {self.suite} failed: "
                                            f"{(errors or [r.stderr.strip()])[-1]}")
        open(stamp, "w").close()

    def depends(self, pkg: str) -> list[str]:
        r = _run(["apt-cache", *self._opts(), "depends", "--important", pkg])
        if r.returncode != 0:
            raise KernelError("no-package", f"{pkg} is not in Debian {self.suite}")
        return [ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines()
                if ln.strip().startswith(("Depends:", "|Depends:"))]

    def resolve(self, pkg: str) -> str:
        """The concrete linux-image-/linux-headers- package a meta package stands for."""
        if re.match(r"^linux-(image|headers)-\d", pkg):
            self.depends(pkg)  # exists?
            return pkg
        concrete = [d for d in self.depends(pkg) if re.match(r"^linux-(image|headers)-\d", d)]
        if not concrete:
            raise KernelError("no-package", f"{pkg} in Debian {self.suite} depends on no concrete kernel package")
        return concrete[0]

    def headers_closure(self, headers: str) -> list[str]:
        """The headers package and the -common and linux-kbuild-* packages it needs."""
        return [headers] + [d for d in self.depends(headers)
                            if re.match(r"^linux-(headers|kbuild)-", d)]

    def download(self, pkgs: list[str], dest: str) -> list[str]:
        """Paths of the .deb files of pkgs under dest, fetched when not already there."""
        os.makedirs(dest, exist_ok=True)
        want = [p for p in pkgs if not glob.glob(os.path.join(dest, f"{p}_*.deb"))]
        if want:
            r = _run(["apt-get", *self._opts(), "-qq", "download", *want], cwd=dest)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                raise KernelError("no-package", f"cannot download {' '.join(want)}: {last}")
        debs = []
        for p in pkgs:
            found = sorted(glob.glob(os.path.join(dest, f"{p}_*.deb")))
            if not found:
                raise KernelError("no-package", f"{p}: no .deb after download")
            debs.append(found[-1])
        return debs


@dataclasses.dataclass
class Prepared:
    root: str  # extracted packages
    release: str  # uname -r of the guest
    vmlinuz: str
    modules: str  # <root>/lib/modules/<release>
    build: str  # headers with generated files (bcc's /lib/modules/<rel>/build)
    source: str  # the -common headers (…/source)


def prepare(k: Kernel, cache: str) -> Prepared:
    """Fetch and extract k's image and headers packages into the cache (not the host's /boot)."""
    apt = Apt(cache, k.suite, k.mirror)
    log(k.name, f"resolving {k.image} and {k.headers} in Debian {k.suite}")
    apt.update()
    image = apt.resolve(k.image)
    headers = apt.resolve(k.headers)
    pkgs = [image, *apt.headers_closure(headers)]
    root = os.path.join(cache, "kernels", image, "root")
    stamp = os.path.join(cache, "kernels", image, "extracted")
    debs = apt.download(pkgs, os.path.join(cache, "debs", k.suite))
    listing = "\n".join(os.path.basename(d) for d in debs)
    if not (os.path.exists(stamp) and open(stamp).read() == listing):
        log(k.name, f"extracting {', '.join(pkgs)}")
        shutil.rmtree(os.path.dirname(root), ignore_errors=True)
        os.makedirs(root)
        for deb in debs:
            r = _run(["dpkg-deb", "-x", deb, root])
            if r.returncode != 0:
                raise KernelError("error", f"dpkg-deb -x {os.path.basename(deb)}: {r.stderr.strip()}")
        # merged-/usr packages put modules under usr/lib: depmod and modprobe look under lib/
        if not os.path.exists(os.path.join(root, "lib")) and os.path.isdir(os.path.join(root, "usr/lib")):
            os.symlink("usr/lib", os.path.join(root, "lib"))
        with open(stamp, "w") as f:
            f.write(listing)
    kernels = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))
    if len(kernels) != 1:
        raise KernelError("error", f"{image}: expected one boot/vmlinuz-*, found {len(kernels)}")
    release = os.path.basename(kernels[0])[len("vmlinuz-"):]
    modules = os.path.join(root, "lib", "modules", release)
    build = os.path.join(root, "usr", "src", f"linux-headers-{release}")
    commons = glob.glob(os.path.join(root, "usr", "src", "linux-headers-*-common*"))
    if not os.path.isdir(build) or len(commons) != 1:
        raise KernelError("error", f"{headers}: headers for {release} not found under usr/src")
    if not os.path.exists(os.path.join(modules, "modules.dep")):
        r = _run(["depmod", "-b", root, release])
        if r.returncode != 0:
            raise KernelError("error", f"depmod for {release}: {r.stderr.strip()}")
    return Prepared(root, release, kernels[0], modules, build, commons[0])


# --- the initramfs -------------------------------------------------------------

INIT = r"""#!/bin/busybox sh
# provtrace vm guest init: mount the host root read-only under a tmpfs
# overlay, give the guest kernel its own modules and headers, run the job,
# write its exit code to the job share, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
. /vm.env
fail() { echo "vm-init: $*"; echo "vm-init: $*" > /dev/kmsg; poweroff -f; }
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "vm-init: insmod $m failed"
done
mkdir -p /lower /upper /newroot /job
if [ "$SHARE" = 9p ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || fail "cannot mount the host root over 9p"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /job || fail "cannot mount the job share over 9p"
else
  mount -t virtiofs -o ro hostroot /lower || fail "cannot mount the host root over virtiofs"
  mount -t virtiofs job /job || fail "cannot mount the job share over virtiofs"
fi
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "cannot mount the overlay root"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=0755 run $R/run
# a checkout under /tmp or /run (CI's clean clone may be there): the tmpfs
# above hides it, so give it back, writable through an overlay of its own
case "$REPO" in
  /tmp/*|/run/*)
    mkdir -p $R$REPO /upper/repo/u /upper/repo/w
    mount -t overlay repo -o lowerdir=/lower$REPO,upperdir=/upper/repo/u,workdir=/upper/repo/w $R$REPO \
      || fail "cannot mount the checkout $REPO" ;;
esac
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mkdir -p $R/run/vmjob
mount --bind /job $R/run/vmjob
# the guest kernel's modules and headers (bcc compiles against build/source)
M=$R/lib/modules/$RELEASE
mkdir -p $M
for f in $MODULES/*; do ln -sfn $f $M/; done
ln -sfn $BUILD $M/build
ln -sfn $SOURCE $M/source
ip link set lo up
hostname provtrace-vm
echo "vm-init: running the job on $(uname -r)"
chroot $R /bin/sh /run/vmjob/job.sh > /job/out.log 2>&1
echo $? > /job/rc
sync
umount /job 2>/dev/null
poweroff -f
"""


def module_files(p: Prepared, share: str) -> list[str]:
    """Paths of the modules the share needs, in load order (modprobe --show-depends)."""
    out: list[str] = []
    for mod in SHARE_MODULES[share]:
        r = _run(["modprobe", "-d", p.root, "-S", p.release, "--show-depends", mod])
        if r.returncode != 0:
            raise KernelError("error", f"{p.release} has no module {mod} (share {share}): {r.stderr.strip()}")
        for ln in r.stdout.splitlines():
            parts = ln.split()
            if parts and parts[0] == "insmod" and parts[1] not in out:
                out.append(parts[1])
    # netfs before fscache (6.1's fscache uses netfs but does not declare it)
    out.sort(key=lambda f: 0 if os.path.basename(f).startswith("netfs.") else 1)
    return out


def _decompressed(path: str) -> bytes:
    if path.endswith(".xz"):
        return lzma.decompress(open(path, "rb").read())
    if path.endswith(".zst"):
        r = subprocess.run(["zstd", "-dc", path], capture_output=True)
        if r.returncode != 0:
            raise KernelError("error", f"zstd -d {path} failed")
        return r.stdout
    return open(path, "rb").read()


def build_initramfs(p: Prepared, share: str, dest: str) -> str:
    """A gzip'd newc cpio with static busybox, the share's modules and the init above."""
    tree = os.path.join(dest, "initramfs")
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "modules", "proc", "sys", "dev"):
        os.makedirs(os.path.join(tree, d))
    shutil.copy2(BUSYBOX, os.path.join(tree, "bin", "busybox"))
    order = []
    for i, path in enumerate(module_files(p, share)):
        stem = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", os.path.basename(path))
        name = f"{i:02d}-{stem}.ko"
        with open(os.path.join(tree, "modules", name), "wb") as f:
            f.write(_decompressed(path))
        order.append(name)
    with open(os.path.join(tree, "modules", "order"), "w") as f:
        f.write("\n".join(order) + "\n")
    env = {"SHARE": share, "RELEASE": p.release, "MODULES": p.modules, "BUILD": p.build, "SOURCE": p.source,
           "REPO": REPO}
    with open(os.path.join(tree, "vm.env"), "w") as f:
        f.writelines(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    with open(os.path.join(tree, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    out = os.path.join(dest, "initramfs.img")
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True, check=True).stdout
    with open(out, "wb") as f:
        cpio = subprocess.Popen([BUSYBOX, "cpio", "-o", "-H", "newc"], cwd=tree, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        gz = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=f)
        cpio.stdout.close()
        cpio.communicate(names.encode())
        gz.wait()
    if cpio.returncode != 0 or gz.returncode != 0:
        raise KernelError("error", "building the initramfs failed")
    return out


# --- the job -----------------------------------------------------------------

def job_script(k: Kernel, jobdir: str) -> str:
    """The shell script that runs k's tests; jobdir is where it writes results."""
    pytest = " ".join(shlex.quote(a) for a in k.tests)
    j = shlex.quote(jobdir)
    head = f"""set -u
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PROVTRACE_REQUIRE_PRIVILEGED=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd {shlex.quote(REPO)}
echo "kernel: $(uname -r)"
"""
    if k.command:
        return head + k.command + "\n"
    return head + f"""start=$(date +%s)
.venv/bin/provtrace doctor > {j}/doctor.txt 2>&1
echo "doctor: exit $? after $(( $(date +%s) - start )) s"
.venv/bin/python -m pytest -q -rfEs -p no:cacheprovider --durations=15 --junitxml={j}/junit.xml {pytest}
"""


def count_junit(path: str) -> tuple[int, int, int] | None:
    """(passed, failed, skipped) from a pytest junit file; None when missing or unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    for s in suites:
        total += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return total - failed - skipped, failed, skipped


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def finish(res: Result, jobdir: str, rc: int | None) -> Result:
    """Fill res from what the job left in jobdir."""
    counts = count_junit(os.path.join(jobdir, "junit.xml"))
    if counts:
        res.passed, res.failed, res.skipped = counts
    if rc is None:
        res.result, res.note = "no-result", "the job wrote no exit code"
    elif rc != 0 or res.failed:
        res.result = "fail"
        res.note = f"exited {rc}" if not counts else ""
    return res


def run_native(k: Kernel, cache: str) -> Result:
    """k's tests on this machine's own kernel."""
    res = Result(k.name, release=os.uname().release)
    jobdir = fresh_dir(os.path.join(cache, "logs", k.name, "job"))
    with open(os.path.join(jobdir, "job.sh"), "w") as f:
        f.write(job_script(k, jobdir))
    log(k.name, f"running natively on {res.release}")
    with open(os.path.join(jobdir, "out.log"), "w") as out:
        try:
            rc = subprocess.run(["/bin/sh", os.path.join(jobdir, "job.sh")], stdout=out,
                                stderr=subprocess.STDOUT, timeout=k.timeout_s).returncode
        except subprocess.TimeoutExpired:
            res.result, res.note = "timeout", f"no result after {k.timeout_s} s"
            return res
    return finish(res, jobdir, rc)


def _virtiofsd(sock: str, source: str, logf) -> subprocess.Popen:
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={source}",
                             "-o", "cache=auto", "-o", "sandbox=chroot"],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        if os.path.exists(sock) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.exists(sock):
        raise KernelError("error", f"virtiofsd for {source} did not start (see {logf.name})")
    return proc


def qemu_argv(k: Kernel, p: Prepared, initrd: str, jobdir: str, serial: str, socks: list[str]) -> list[str]:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max,cx16=off",
            "-m", f"{k.memory_mb}M", "-smp", str(k.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{serial}",
            "-kernel", p.vmlinuz, "-initrd", initrd,
            "-append", "console=ttyS0 oops=panic panic=-1 loglevel=4 rdinit=/init"]
    if k.share == "9p":
        argv += ["-fsdev", "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap",
                 "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                 "-fsdev", f"local,id=job,path={jobdir},security_model=none",
                 "-device", "virtio-9p-pci,fsdev=job,mount_tag=job"]
    else:
        argv += ["-object", f"memory-backend-memfd,id=mem,size={k.memory_mb}M,share=on",
                 "-numa", "node,memdev=mem"]
        for i, (sock, tag) in enumerate(zip(socks, ("hostroot", "job"))):
            argv += ["-chardev", f"socket,id=vfs{i},path={sock}",
                     "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={tag}"]
    return argv


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_guest(k: Kernel, cache: str) -> Result:
    """k's tests inside a QEMU guest running k."""
    res = Result(k.name)
    logdir = os.path.join(cache, "logs", k.name)
    os.makedirs(logdir, exist_ok=True)
    serial = os.path.join(logdir, "serial.log")
    if os.path.exists(serial):
        os.unlink(serial)
    p = prepare(k, cache)
    res.release = p.release
    initrd = build_initramfs(p, k.share, logdir)
    jobdir = fresh_dir(os.path.join(logdir, "job"))
    with open(os.path.join(jobdir, "job.sh"), "w") as f:
        f.write(job_script(k, "/run/vmjob"))
    helpers: list[subprocess.Popen] = []
    with open(os.path.join(logdir, "host.log"), "w") as hostlog:
        try:
            socks = []
            if k.share == "virtiofs":
                for tag, src in (("hostroot", "/"), ("job", jobdir)):
                    socks.append(os.path.join(logdir, f"{tag}.sock"))
                    helpers.append(_virtiofsd(socks[-1], src, hostlog))
            log(k.name, f"booting {p.release} under QEMU (TCG, {k.share}); serial log {serial}")
            qemu = subprocess.Popen(qemu_argv(k, p, initrd, jobdir, serial, socks), stdout=hostlog,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            helpers.append(qemu)
            try:
                qemu.wait(timeout=k.timeout_s)
            except subprocess.TimeoutExpired:
                res.result, res.note = "timeout", f"no result after {k.timeout_s} s; serial log {serial}"
                counts = count_junit(os.path.join(jobdir, "junit.xml"))
                if counts:
                    res.passed, res.failed, res.skipped = counts
                return res
        finally:
            for h in reversed(helpers):
                _stop(h)
    rc_file = os.path.join(jobdir, "rc")
    rc = int(open(rc_file).read().strip() or -1) if os.path.exists(rc_file) else None
    finish(res, jobdir, rc)
    if rc is None:
        panic = _grep(serial, ("Kernel panic", "vm-init:"))
        res.result = "panic" if panic and "Kernel panic" in panic else "no-result"
        res.note = f"{panic or 'the guest stopped without a result'}; serial log {serial}"
    elif res.result != "pass":
        res.note = res.note or f"details: {os.path.join(jobdir, 'out.log')}"
    return res


def _grep(path: str, needles: tuple[str, ...]) -> str:
    """The first line of path holding one of needles ('' if none)."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if any(n in line for n in needles):
                    return line.strip()
    except OSError:
        pass
    return ""


def prove(k: Kernel, cache: str) -> Result:
    start = time.monotonic()
    try:
        res = run_native(k, cache) if k.native else run_guest(k, cache)
    except KernelError as e:
        res = Result(k.name, result=e.kind, note=str(e))
    res.seconds = time.monotonic() - start
    log(k.name, f"{res.result} ({res.passed} passed, {res.failed} failed, {res.skipped} skipped) "
                f"in {res.seconds:.0f} s{': ' + res.note if res.note else ''}")
    return res


def table(results: list[Result]) -> str:
    head = ("kernel", "release", "result", "passed", "failed", "skipped", "time")
    rows = [head] + [(r.name, r.release, r.result, str(r.passed), str(r.failed), str(r.skipped),
                      f"{r.seconds:.0f}s") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"  {r.name}: {r.note}" for r in results if r.note]
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run-matrix", description=__doc__.split("\n\n")[0])
    ap.add_argument("kernels", nargs="*", metavar="KERNEL", help="kernels of the matrix to run (default: all)")
    ap.add_argument("--matrix", default=DEFAULT_MATRIX, help="the matrix file (default: vm/kernels.toml)")
    ap.add_argument("--cache", default=os.environ.get("PROVTRACE_VM_CACHE", DEFAULT_CACHE),
                    help="downloads, extracted kernels and logs (default: $PROVTRACE_VM_CACHE or %(default)s)")
    ap.add_argument("--timeout", type=int, help="seconds per kernel, overriding the matrix")
    ap.add_argument("--suite", help="run this [suite.NAME] on every kernel instead of each kernel's own")
    ap.add_argument("--command", metavar="SH", help="run this shell command in the repository instead of "
                    "the tests (pass: exit 0; its output: LOGS/KERNEL/job/out.log)")
    ap.add_argument("--list", action="store_true", help="list the matrix's kernels and exit")
    args = ap.parse_args(argv)
    try:
        kernels, suites = load_matrix(args.matrix)
        if args.suite and args.suite not in suites:
            raise MatrixError(f"no [suite.{args.suite}] in {args.matrix} (known: {', '.join(suites)})")
        if args.list:
            for k in kernels.values():
                where = "native" if k.native else f"{k.suite} {k.image} {k.headers} {k.share}"
                print(f"{k.name}\t{where}")
            return 0
        unknown = [n for n in args.kernels if n not in kernels]
        if unknown:
            raise MatrixError(f"no kernel {', '.join(unknown)} in {args.matrix} (known: {', '.join(kernels)})")
        chosen = [kernels[n] for n in args.kernels] or list(kernels.values())
        if os.geteuid() != 0:
            raise MatrixError("must run as root (guests run privileged eBPF tests; native runs need root)")
        if any(not k.native for k in chosen):
            ensure_host_tools()
        os.makedirs(args.cache, exist_ok=True)
    except MatrixError as e:
        print(f"run-matrix: {e}", file=sys.stderr)
        return 2
    results = []
    for k in chosen:
        if args.timeout:
            k.timeout_s = args.timeout
        if args.suite:
            k.tests = suites[args.suite]
        k.command = args.command or ""
        results.append(prove(k, args.cache))
    print(table(results))
    return 0 if all(r.result == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
