#!/usr/bin/env bash
# provtrace setup: one idempotent command that makes a fresh Debian machine
# ready to trace, then runs a demo trace into the default store.
#
#   sudo bash setup.sh            # set up, then run the demo
#   sudo bash setup.sh --no-demo  # set up only (test.sh uses this)
#   bash setup.sh --venv-only DIR # only step 4, into the venv folder DIR
#
# Steps, each skipped when already done:
#   1. apt packages: python3-bpfcc (bcc for /usr/bin/python3), Debian's 6.1
#      kernel headers, strace, R's IRkernel, and tools the tests use (Graphviz
#      and Chromium for pictures and the HTML report, PostgreSQL for the fleet
#      store, QEMU and busybox for vm/).
#   2. kernel headers for bcc: when /lib/modules/$(uname -r)/build is missing,
#      link Debian's newest linux-headers-6.1.0-N-amd64 (and -common) there.
#      Those headers do NOT match the running kernel; provtrace takes every
#      struct offset from the running kernel's BTF, never from these headers.
#   3. tracefs at /sys/kernel/tracing.
#   4. .venv made from /usr/bin/python3 with --system-site-packages (so it
#      sees bcc), holding exactly the Python packages that requirements.lock
#      pins (hash-checked), with provtrace installed in editable mode.
#   5. where systemd runs: the daemon's unit in /etc/systemd/system (not enabled).
#
# Supported: Debian 12 (bookworm) on x86_64, the release the lock and the apt
# package names are made for. Other releases get a warning and an attempt.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
caller=$PWD
cd "$here"
demo=1
venv_only=""
while [ $# -gt 0 ]; do
  a=$1; shift
  case "$a" in
    --no-demo) demo=0 ;;
    --venv-only) venv_only=$(cd "$caller" && realpath -m -- "${1:?setup.sh: --venv-only needs a folder}"); shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }

# Step 4, the venv: exactly requirements.lock, hash-checked.
# `pip install --require-hashes --no-deps -r requirements.lock` runs every time
# (under a second when nothing changed; it puts back any package upgraded or
# removed by hand), what the lock does not name is removed (like pip-sync),
# provtrace is installed with --no-deps --no-build-isolation (no resolver, the
# locked build backend), and tools/check_lock.py proves the venv equals the
# lock. The lock is refreshed only by tools/lock.sh, never here.
# `bash setup.sh --venv-only DIR` runs this step alone, on any venv folder.
lock=$here/requirements.lock
vlog() { printf '[venv] %s\n' "$*"; }
make_venv() {
  local venv=$1 py stamp want extras
  local pipq=(-m pip --disable-pip-version-check -q)
  if [ ! -x "$venv/bin/python" ]; then
    vlog "creating $venv from /usr/bin/python3 (--system-site-packages, for bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
  fi
  py=$venv/bin/python

  # pip prints every satisfied requirement without -q, and chatter about this
  # machine's extra local indexes with it; keep only what matters.
  "$py" "${pipq[@]}" install --require-hashes --no-deps -r "$lock" 2> >(grep -v "^WARNING: Location 'file:" >&2)

  # Like pip-sync: what the lock does not name goes (provtrace itself stays).
  mapfile -t extras < <("$py" "$here/tools/check_lock.py" --venv "$venv" --extras "$lock")
  if [ "${#extras[@]}" -gt 0 ]; then
    vlog "removing what the lock does not name: ${extras[*]}"
    "$py" "${pipq[@]}" uninstall -y "${extras[@]}"
  fi

  stamp=$venv/.provtrace-installed
  # (re)installed when the packaging or the compiled decoder's source changes,
  # (pip builds tracer/capture/_decode.c in place; optional: without a compiler
  # provtrace decodes in Python and `provtrace doctor` says so)
  want=$(cat "$here/pyproject.toml" "$here/setup.py" "$here/tracer/capture/_decode.c" | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "import provtrace.tracer" 2>/dev/null; then
    vlog "installing provtrace (editable, --no-deps) into $venv"
    # (setuptools warns that editable installs can be shadowed by folders of the
    # same name: provtrace's folders are mapped under provtrace.*, so it can't.)
    (cd "$here" && PYTHONWARNINGS=ignore "$py" "${pipq[@]}" install --no-deps --no-build-isolation -e .)
    echo "$want" > "$stamp"
  fi

  # Bytecode for provtrace's own modules, written now: where PYTHONDONTWRITEBYTECODE
  # is set (as in many containers) every `provtrace` would otherwise compile
  # them again (about 18 ms of a daemon-traced run's start-up). Python checks each
  # .pyc against its source, so an edited file is never run stale.
  "$py" -m compileall -q -j 0 "$here/tracer" "$here/tui" "$here/probes" >/dev/null || vlog "compileall failed (provtrace still runs, compiling at import)"

  "$py" "$here/tools/check_lock.py" --venv "$venv" "$lock"
}

if [ -n "$venv_only" ]; then
  make_venv "$venv_only"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: must run as root (it installs apt packages and kernel headers); try: sudo bash setup.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release 2>/dev/null || true
if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
  warn "set-up supports Debian 12 (bookworm); this is ${PRETTY_NAME:-an unknown system}: trying anyway"
fi

# --- 1. apt packages --------------------------------------------------------
apt_pkgs=(python3-bpfcc python3-venv python3-pip python3-dev gcc strace bpftrace
          tmux r-cran-irkernel iproute2 procps openssh-client
          graphviz chromium fonts-dejavu-core postgresql
          qemu-system-x86 busybox-static)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
headers_pkg=$(dpkg-query -W -f='${Package}\n' 'linux-headers-6.1.0-*-amd64' 2>/dev/null \
              | grep -E '^linux-headers-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n1 || true)
if [ -n "$headers_pkg" ] && ! dpkg-query -W -f='${Status}' "$headers_pkg" 2>/dev/null | grep -q "install ok installed"; then
  headers_pkg=""
fi
if [ "${#missing[@]}" -gt 0 ] || [ -z "$headers_pkg" ]; then
  log "apt-get update"
  apt-get update -qq
  if [ -z "$headers_pkg" ]; then
    headers_pkg=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' \
                  | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$headers_pkg" ] || { echo "setup.sh: no linux-headers-6.1.0-N-amd64 package found in apt" >&2; exit 1; }
    missing+=("$headers_pkg")
  fi
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages present"
fi

# --- 2. kernel headers for bcc ---------------------------------------------
krel=$(uname -r)
moddir=/lib/modules/$krel
if [ -e "$moddir/build/Makefile" ]; then
  log "headers: $moddir/build present"
else
  hdr_dir=/usr/src/$headers_pkg
  common_dir=/usr/src/${headers_pkg%-amd64}-common
  [ -d "$hdr_dir" ] && [ -d "$common_dir" ] || { echo "setup.sh: $hdr_dir or $common_dir missing" >&2; exit 1; }
  warn "no headers for running kernel $krel; linking Debian's $headers_pkg into $moddir."
  warn "their struct layouts do not match this kernel: provtrace reads offsets from /sys/kernel/btf/vmlinux instead."
  mkdir -p "$moddir"
  ln -sfn "$hdr_dir" "$moddir/build"
  ln -sfn "$common_dir" "$moddir/source"
fi

# --- 3. tracefs --------------------------------------------------------------
if [ -e /sys/kernel/tracing/events ]; then
  log "tracefs mounted"
else
  log "mounting tracefs at /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing
fi

# --- 4. venv (make_venv, above) -------------------------------------------------

venv=$here/.venv
make_venv "$venv"
"$venv/bin/python" -c "import bcc, provtrace.tracer" \
  || { echo "setup.sh: the venv cannot import bcc or provtrace" >&2; exit 1; }
# Put provtrace on PATH for root shells.
ln -sfn "$venv/bin/provtrace" /usr/local/bin/provtrace

# --- 5. systemd unit ----------------------------------------------------------
# Installed (not enabled) where systemd runs: systemctl enable --now provtrace
unit=packaging/systemd/provtrace.service
if [ -d /run/systemd/system ]; then
  if ! cmp -s "$unit" /etc/systemd/system/provtrace.service; then
    log "installing /etc/systemd/system/provtrace.service (enable with: systemctl enable --now provtrace)"
    install -m 0644 "$unit" /etc/systemd/system/provtrace.service
    systemctl daemon-reload
  fi
else
  log "systemd is not running here: $unit not installed"
fi

if [ "$demo" -eq 1 ]; then
  log "demo: provtrace doctor, then a traced shell pipeline"
  "$venv/bin/provtrace" doctor || true
  exec "$venv/bin/provtrace" demo
fi
