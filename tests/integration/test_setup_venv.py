"""setup.sh's venv step (`setup.sh --venv-only DIR`) builds exactly the lock, and puts it back after hand edits.

Builds a throwaway venv from nothing with the real script (pip's cache makes
that ~30 s), then upgrades, downgrades and adds packages by hand the way a
user or a newer release would, and runs the script again.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _venv_sh(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "setup.sh"), "--venv-only", str(venv)], capture_output=True,
                          text=True, timeout=600)


def _version(venv: Path, name: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import importlib.metadata as m; print(m.version({name!r}))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q", *args], check=True,
                   capture_output=True, timeout=300)


def test_venv_script_installs_the_lock_and_undoes_drift(tmp_path):
    venv = tmp_path / "venv"
    first = _venv_sh(venv)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "venv matches requirements.lock" in first.stdout

    locked = re.search(r"^packaging==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    _pip(venv, "install", f"packaging!={locked}")   # another release, as `pip install -U` would bring
    _pip(venv, "install", "tomli-w")                # a package the lock does not name
    assert _version(venv, "packaging") != locked
    check = subprocess.run([str(venv / "bin" / "python"), str(ROOT / "tools" / "check_lock.py"),
                            str(ROOT / "requirements.lock")], capture_output=True, text=True)
    assert check.returncode == 1
    assert "wrong version: packaging" in check.stderr and "not in the lock: tomli-w" in check.stderr

    second = _venv_sh(venv)
    assert second.returncode == 0, second.stderr[-2000:]
    assert _version(venv, "packaging") == locked
    assert "removing what the lock does not name: tomli-w" in second.stdout
    assert "venv matches requirements.lock" in second.stdout

    # a third run has nothing to do
    third = _venv_sh(venv)
    assert third.returncode == 0 and "installing" not in third.stdout and "removing" not in third.stdout
