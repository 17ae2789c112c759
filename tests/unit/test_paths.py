"""Lexical path resolution, file kinds, and the JSON form of non-UTF-8 names."""

from __future__ import annotations

import base64
import os

import pytest

from provtrace.tracer.model.paths import DATA, LIBRARY, SYSTEM, TEMP, classify, display, resolve, to_json


@pytest.mark.parametrize("base,path,want", [
    ("/home/u", "data.csv", "/home/u/data.csv"),
    ("/home/u/", "./sub//x", "/home/u/sub/x"),
    ("/home/u/proj", "../other/./f", "/home/u/other/f"),
    ("/", "../../etc/passwd", "/etc/passwd"),  # '..' above the root stays at the root
    ("/home/u", "", "/home/u"),
    ("/home/u", "/abs/../p", "/p"),
    (None, "/abs/path", "/abs/path"),
    (None, "relative", None),
    (None, "", None),
    ("/a/link", "../b", "/a/b"),  # lexical on purpose: symlinks are not followed
    (None, "//double/slash", "/double/slash"),
    (None, "///triple", "/triple"),
    ("//srv", "x", "/srv/x"),
    (None, "/", "/"),
])
def test_resolve(base, path, want):
    assert resolve(base, path) == want


@pytest.mark.parametrize("path,want", [
    ("/usr/lib/x86_64-linux-gnu/x.so", LIBRARY),
    ("/usr/lib/x.so", LIBRARY),
    ("/home/u/build/libfoo.so.1.2", LIBRARY),
    ("/home/u/.venv/lib/python3.11/site-packages/numpy/__init__.py", LIBRARY),
    ("/usr/lib/python3/dist-packages/yaml/__init__.py", LIBRARY),
    ("/home/u/proj/__pycache__/m.cpython-311.pyc", LIBRARY),
    ("/usr/bin/python3", LIBRARY),
    ("/proc/self/maps", SYSTEM),
    ("/proc", SYSTEM),
    ("/etc/passwd", SYSTEM),
    ("/dev/null", SYSTEM),
    ("/sys/devices/system/cpu/online", SYSTEM),
    ("/usr/share/zoneinfo/UTC", SYSTEM),
    ("/dev/shm/x", TEMP),
    ("/home/u/data.csv", DATA),
    ("/home/u/results/model.pkl", DATA),
    ("/tmp/scratch.txt", DATA),  # temp by lifetime is decided at query time
    ("/home/u/sonnet.txt", DATA),
])
def test_classify(path, want):
    assert classify(path) == want


def test_classify_mapped_exec_is_library():
    assert classify("/home/u/plugin.bin", mapped_exec=True) == LIBRARY


def test_to_json_utf8():
    assert to_json("/home/u/données/é.csv") == {"path": "/home/u/données/é.csv"}


def test_to_json_non_utf8():
    raw = b"/home/u/caf\xe9/\xff.csv"
    j = to_json(os.fsdecode(raw))
    assert j["path"] == "/home/u/caf\\xe9/\\xff.csv"
    assert base64.b64decode(j["path_b64"]) == raw
    j["path"].encode("utf-8")  # always valid text


def test_display():
    assert display(os.fsdecode(b"/x/caf\xe9")) == "/x/caf\\xe9"
    assert display("/x/é") == "/x/é"


@pytest.mark.parametrize("path", [
    "/root/.ipython/profile_default/history.sqlite",
    "/home/u/.local/share/jupyter/runtime/kernel-1.json",
    "/run/user/1000/jupyter/runtime/kernel-2.json",
])
def test_kernel_state_is_system_not_data(path):
    assert classify(path) == "system"


def test_dataset_caches_stay_data():
    assert classify("/home/u/.cache/huggingface/datasets/train.arrow") == "data"


# ---- noise: fonts, environments, kernels, R (issue 14) -----------------------------

@pytest.mark.parametrize("path,want", [
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", SYSTEM),
    ("/usr/local/share/fonts/x.pcf.gz", SYSTEM),
    ("/etc/fonts/fonts.conf", SYSTEM),
    ("/root/.cache/fontconfig/0b1bcc92-le64.cache-9", SYSTEM),
    ("/home/u/.local/share/fonts/Inter.otf", SYSTEM),
    ("/home/u/proj/assets/Brand.ttf", SYSTEM),  # a font is read to draw text, wherever it is
    ("/home/u/.cache/matplotlib/fontlist-v390.json", SYSTEM),
    ("/tmp/kernel-6d3c8a1e-2f.json", SYSTEM),  # a connection file outside the runtime dir
    ("/home/u/.pyenv/shims/python", LIBRARY),
    ("/home/u/.pyenv/versions/3.12.1/bin/python3.12", LIBRARY),
    ("/tmp/RtmpAbC123/file1a2b3c.png", TEMP),
    ("/var/tmp/Rtmp9zYxWv", TEMP),
    ("/tmp/Rtmpish.csv", DATA),  # not R's tempdir name
    ("/home/u/kernel-notes.json.bak", DATA),
])
def test_classify_noise(path, want):
    assert classify(path) == want


def _env(root, marker):
    """A Python environment at root, marked as virtualenv or conda marks one."""
    (root / "lib" / "python3.11" / "site-pkgs" / "m").mkdir(parents=True)
    (root / "bin").mkdir()
    if marker == "pyvenv.cfg":
        (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    else:
        (root / "conda-meta").mkdir()
    return root


@pytest.mark.parametrize("marker", ["pyvenv.cfg", "conda-meta"])
def test_any_environment_is_library_whatever_its_name(tmp_path, marker):
    env = _env(tmp_path / "proj" / "my-odd-env-name", marker)
    # names no path rule knows: only the marker says it is an environment
    assert classify(str(env / "lib" / "python3.11" / "site-pkgs" / "m" / "core.py")) == LIBRARY
    assert classify(str(env / "bin" / "tool")) == LIBRARY
    assert classify(str(env / marker)) == LIBRARY
    assert classify(str(tmp_path / "proj" / "data.csv")) == DATA  # beside the env: data


def test_files_of_a_project_that_is_its_own_venv_stay_data(tmp_path):
    env = _env(tmp_path / "proj", "pyvenv.cfg")  # `python -m venv .` in a project
    assert classify(str(env / "results" / "table.csv")) == DATA
    assert classify(str(env / "train.csv")) == DATA
    assert classify(str(env / "lib" / "python3.11" / "x.py")) == LIBRARY


def test_environment_lookup_is_cached_per_directory(tmp_path, monkeypatch):
    from provtrace.tracer.model import paths

    env = _env(tmp_path / "e", "pyvenv.cfg")
    looked: list[str] = []
    real = os.path.isfile
    monkeypatch.setattr(paths.os.path, "isfile", lambda p: looked.append(p) or real(p))
    for i in range(50):
        classify(str(env / "bin" / f"tool{i}"))
    assert looked.count(str(env / "bin" / "pyvenv.cfg")) == 1
    assert looked.count(str(env / "pyvenv.cfg")) == 1
    assert paths.env_root(str(env / "bin")) == str(env)
