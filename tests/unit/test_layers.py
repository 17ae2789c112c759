"""The layers contract in pyproject.toml ([tool.importlinter]) holds, and can fail.

`lint-imports` reads the contracts and checks every import in tracer/ and
tui/, lazy ones included. The run-time checks below prove what the static
graph cannot: that the lazy imports stay lazy (`provtrace runs` never loads
the TUI, bcc or grpc). docs/architecture.md explains the layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--config", str(cwd / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_contracts_are_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_back_edge_breaks_the_layers(tmp_path):
    """A copy of the tree where the model imports capture again: lint-imports fails and names the edge."""
    pkg = tmp_path / "provtrace"
    shutil.copytree(ROOT / "tracer", pkg / "tracer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tui", pkg / "tui", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    processes = pkg / "tracer" / "model" / "processes.py"
    processes.write_text(processes.read_text().replace(
        "from . import events as E\n", "from . import events as E\nfrom ..capture import layouts\n", 1))
    commands = pkg / "tracer" / "commands.py"
    commands.write_text(commands.read_text() + "\n\ndef _tui():\n    from ..tui import app  # noqa: PLC0415\n")
    r = _lint(tmp_path, pythonpath=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "provtrace.tracer.model.processes -> provtrace.tracer.capture.layouts" in r.stdout, r.stdout
    assert "provtrace.tracer.commands -> provtrace.tui.app" in r.stdout, r.stdout
    assert "2 broken" in r.stdout, r.stdout


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running code."""
    probe = code + "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


HEAVY = ("bcc", "grpc", "textual")


def _verb(argv: list[str]) -> str:
    return ("from provtrace.tracer import cli\n"
            f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n")


def test_a_query_verb_loads_no_tui_bcc_or_grpc(tmp_path):
    loaded = _modules_after(_verb(["runs", "--db", str(tmp_path / "none.db"), "--json"]))
    assert "provtrace.tracer.commands" in loaded
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m.startswith("provtrace.tui")}


def test_the_tui_verb_is_what_loads_the_tui(tmp_path):
    """The check above can fail: `provtrace tui` goes through the same main and loads the TUI's entry."""
    loaded = _modules_after(_verb(["tui", "--db", str(tmp_path / "none.db")]))
    assert "provtrace.tui.entry" in loaded
    assert "textual" not in loaded  # a missing store is refused before the app is built
