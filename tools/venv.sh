#!/usr/bin/env bash
# Makes VENV (default: .venv) hold exactly what requirements.lock pins, plus
# provtrace itself in editable mode. setup.sh runs this; so can you.
#
#   bash tools/venv.sh [VENV]
#
# - The venv is made from Debian's /usr/bin/python3 with --system-site-packages,
#   so it sees bcc (python3-bpfcc is not on PyPI).
# - `pip install --require-hashes --no-deps -r requirements.lock` runs every time:
#   with everything in place it takes under a second, and it puts back any
#   package that was upgraded or removed by hand since.
# - provtrace is installed with --no-deps --no-build-isolation: no resolver
#   runs, and the build backend (setuptools, wheel) is the locked one.
# - At the end the venv is checked against the lock: every pin installed at
#   its version, nothing installed in the venv that the lock does not name
#   (anything else found in the venv is uninstalled first, as pip-sync does).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv}
lock=$root/requirements.lock
log() { printf '[venv] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv from /usr/bin/python3 (--system-site-packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
py=$venv/bin/python
pipq=(-m pip --disable-pip-version-check -q)

# pip prints every satisfied requirement without -q, and chatter about this
# machine's extra local indexes with it; keep only what matters.
"$py" "${pipq[@]}" install --require-hashes --no-deps -r "$lock" 2> >(grep -v "^WARNING: Location 'file:" >&2)

# Like pip-sync: what the lock does not name goes (provtrace itself stays).
mapfile -t extras < <("$py" "$root/tools/check_lock.py" --venv "$venv" --extras "$lock")
if [ "${#extras[@]}" -gt 0 ]; then
  log "removing what the lock does not name: ${extras[*]}"
  "$py" "${pipq[@]}" uninstall -y "${extras[@]}"
fi

stamp=$venv/.provtrace-installed
want=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "import provtrace.tracer" 2>/dev/null; then
  log "installing provtrace (editable, --no-deps) into $venv"
  # (setuptools warns that editable installs can be shadowed by folders of the
  # same name: provtrace's folders are mapped under provtrace.*, so it can't.)
  (cd "$root" && PYTHONWARNINGS=ignore "$py" "${pipq[@]}" install --no-deps --no-build-isolation -e .)
  echo "$want" > "$stamp"
fi

"$py" "$root/tools/check_lock.py" --venv "$venv" "$lock"
