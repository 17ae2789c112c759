"""requirements.lock pins what pyproject.toml allows, with hashes, and the venv holds exactly it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _blocks() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), one entry per `name==version` block of the lock."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = PIN.match(line)
        if m:
            name = canonicalize_name(m.group(1))
            blocks[name] = (m.group(2), [])
        elif name and "--hash=sha256:" in line:
            blocks[name][1].append(line.split("--hash=sha256:")[1].split()[0])
    return blocks


def _declared() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(meta["project"]["dependencies"]) + list(meta["build-system"]["requires"])
    for extra in meta["project"]["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_declared_dependency_is_pinned_inside_its_range():
    blocks = _blocks()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in blocks, f"{req} is not in requirements.lock: run bash tools/lock.sh"
        version = blocks[name][0]
        assert req.specifier.contains(version, prereleases=True), \
            f"lock pins {name}=={version}, outside {req}: run bash tools/lock.sh"


def test_every_pin_is_exact_and_hashed():
    blocks = _blocks()
    assert len(blocks) > 50  # the whole transitive set, not a handful of top-level names
    for name, (version, hashes) in blocks.items():
        assert hashes, f"{name}=={version} has no --hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_lock_names_its_refresh_command():
    assert "bash tools/lock.sh" in LOCK.read_text().splitlines()[1]


def test_this_venv_matches_the_lock():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "check_lock.py"), str(LOCK)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_check_lock_names_each_difference():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import check_lock  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    pins = {"a": "1.0", "b": "2.0", "c": "3.0"}
    seen = {"a": "1.0", "b": "2.1", "extra": "0.1", "provtrace": "0.1.0"}
    diffs = check_lock.differences(pins, seen, local={"a", "b", "extra", "provtrace"})
    assert diffs == ["wrong version: b 2.1 installed, lock pins 2.0", "missing: c==3.0",
                     "not in the lock: extra==0.1"]
