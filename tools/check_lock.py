"""Checks that a venv holds exactly what a lock file pins.

    python tools/check_lock.py [--venv VENV] requirements.lock

Run it with any Python; it asks VENV's own interpreter (default: the running
one) what is installed. With --extras it only lists what the venv holds that
the lock does not name (setup.sh removes those). Exits 0 when every pinned package is installed at its
pinned version and the venv itself holds nothing else (provtrace aside);
otherwise prints one line per difference and exits 1. A pinned package that
pip left to Debian's copy (same version, seen through --system-site-packages)
counts as installed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
OWN = {"provtrace"}

# Run inside the venv's interpreter: versions of everything importable, and
# the names of the distributions that live in the venv's own site-packages.
_PROBE = r"""
import importlib.metadata as md, json, sysconfig
own = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
seen, local = {}, []
for d in md.distributions():
    name = d.metadata["Name"]
    if not name:
        continue
    seen.setdefault(name, d.version)   # first on sys.path wins, as for import
    if any(str(d.locate_file("")).startswith(p) for p in own):
        local.append(name)
print(json.dumps({"seen": seen, "local": local}))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed(python: str) -> tuple[dict[str, str], set[str]]:
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    return ({canonical(n): v for n, v in data["seen"].items()}, {canonical(n) for n in data["local"]})


def differences(pins: dict[str, str], seen: dict[str, str], local: set[str]) -> list[str]:
    out = []
    for name, version in sorted(pins.items()):
        have = seen.get(name)
        if have is None:
            out.append(f"missing: {name}=={version}")
        elif have != version:
            out.append(f"wrong version: {name} {have} installed, lock pins {version}")
    out += [f"not in the lock: {name}=={seen[name]}" for name in sorted(local - set(pins) - OWN)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("--venv", type=Path, help="venv to check (default: the running interpreter's)")
    ap.add_argument("--extras", action="store_true",
                    help="only print, one a line, what the venv holds that the lock does not name")
    args = ap.parse_args(argv)
    python = str(args.venv / "bin" / "python") if args.venv else sys.executable
    pins = read_lock(args.lock)
    seen, local = installed(python)
    if args.extras:
        for name in sorted(local - set(pins) - OWN):
            print(name)
        return 0
    diffs = differences(pins, seen, local)
    for d in diffs:
        print(f"check_lock: {d}", file=sys.stderr)
    if diffs:
        print(f"check_lock: the venv does not match {args.lock}; run: bash setup.sh --venv-only VENV", file=sys.stderr)
        return 1
    print(f"check_lock: venv matches {args.lock.name} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
