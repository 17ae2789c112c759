"""vm/matrix.py without booting anything: the matrix file, the result table, junit counts.

Booting kernels is tests/vm/test_matrix_vm.py (PROVTRACE_VM=1)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vm_matrix", ROOT / "vm" / "matrix.py")
M = importlib.util.module_from_spec(_spec)
sys.modules["vm_matrix"] = M  # dataclasses look their module up
_spec.loader.exec_module(M)

SUITES = '[suite.s]\npytest = ["tests/vm/test_guest_smoke.py"]\n'


def _matrix(tmp_path, text):
    p = tmp_path / "kernels.toml"
    p.write_text(text)
    return str(p)


def test_the_shipped_matrix_covers_the_promised_kernels():
    kernels, suites = M.load_matrix(M.DEFAULT_MATRIX)
    assert {"bullseye-5.10", "bookworm-6.1", "bookworm-6.1-cloud", "trixie-6.12", "host"} <= set(kernels)
    assert kernels["host"].native
    assert kernels["bookworm-6.1-cloud"].share == "virtiofs"
    for k in kernels.values():
        for arg in k.tests:  # every test file a suite names exists
            if arg.startswith("tests/"):
                assert (ROOT / arg.split("::")[0]).is_file(), arg
    assert "smoke" in suites


@pytest.mark.parametrize("text, message", [
    ("[kernel.a]\nnative = true\ntests = \"nope\"\n" + SUITES, "names no [suite.NAME]"),
    ("[kernel.a]\nsuite = \"bookworm\"\ntests = \"s\"\n" + SUITES, "needs image"),
    ("[kernel.a]\nsuite = \"bookworm\"\nimage = \"i\"\nheaders = \"h\"\nshare = \"nfs\"\ntests = \"s\"\n" + SUITES,
     "share must be one of"),
    (SUITES, "no [kernel.NAME] entries"),
    ("[kernel.a\n", "kernels.toml"),
])
def test_a_malformed_matrix_is_one_clear_line(tmp_path, text, message):
    with pytest.raises(M.MatrixError, match=None) as e:
        M.load_matrix(_matrix(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_defaults_fill_what_a_kernel_leaves_out(tmp_path):
    kernels, _ = M.load_matrix(_matrix(tmp_path, '[defaults]\ntimeout_s = 7\n[kernel."x-6.1"]\nsuite = "bookworm"\n'
                                                 'image = "i"\nheaders = "h"\ntests = "s"\n' + SUITES))
    k = kernels["x-6.1"]  # a quoted name may hold dots
    assert (k.timeout_s, k.share, k.tests) == (7, "9p", ["tests/vm/test_guest_smoke.py"])


def test_unknown_kernel_on_the_command_line_exits_2(capsys):
    assert M.main(["no-such-kernel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no kernel no-such-kernel" in err


def test_junit_counts_and_table(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite tests="10" failures="1" errors="1" skipped="2"/></testsuites>')
    assert M.count_junit(str(junit)) == (6, 2, 2)
    assert M.count_junit(str(tmp_path / "missing.xml")) is None
    out = M.table([M.Result("bookworm-6.1", "6.1.0-50-amd64", "fail", 6, 2, 2, 61.0),
                   M.Result("bullseye-5.10", result="no-package", note="linux-image-x is not in Debian bullseye")])
    lines = out.splitlines()
    assert lines[0].split() == ["kernel", "release", "result", "passed", "failed", "skipped", "time"]
    assert lines[1].split() == ["bookworm-6.1", "6.1.0-50-amd64", "fail", "6", "2", "2", "61s"]
    assert lines[-1] == "  bullseye-5.10: linux-image-x is not in Debian bullseye"


def test_static_busybox_is_told_from_a_dynamic_program():
    assert not M.is_static_elf("/usr/bin/python3")  # has a program interpreter
    assert not M.is_static_elf(__file__)  # not ELF
    if Path("/var/lib/dpkg/info/busybox-static.list").exists():  # run-matrix installed it
        assert M.is_static_elf("/bin/busybox")
