"""provtrace env's manifests on context fixtures (no root).

The Julia case is built by the real resolver (tracer/context/julia.py) from the
fixture depot under tests/fixtures/context/julia, whose README says which parts
are real Julia data and which are invented; the julia_version in the contexts
here is synthetic (no Julia was run). PyPI site directories are synthetic
dist-info trees made per test; PyPI's JSON API is played by a local HTTP
server so the tests need no network.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provtrace.tracer.context.julia import JuliaPackages
from provtrace.tracer.errors import UsageError
from provtrace.tracer.export import manifests as M
from provtrace.tracer.export.requirements import close_over_dependencies, render_requirements

FIXTURES = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "fixtures", "context", "julia"))
UUID_LEN = 36


# -- julia ---------------------------------------------------------------------

def _julia_context() -> dict:
    touched = [f"{FIXTURES}/depot/packages/Example/aqsx3/src/Example.jl",
               f"{FIXTURES}/depot/packages/JSON/93Ea8/src/JSON.jl",
               f"{FIXTURES}/depot/packages/NoProject/zzzz1/src/NoProject.jl"]
    return {"packages": JuliaPackages().packages_for(touched),
            "interpreters": [{"name": "julia", "version": "1.10.4"}]}  # synthetic


def test_julia_manifest_follows_pkg_format_2():
    m = M.build(_julia_context(), "julia", "R1")
    files, warnings = m.files, m.warnings
    assert any("no Julia was run here" in w for w in warnings)
    project = tomllib.loads(files["Project.toml"])
    manifest = tomllib.loads(files["Manifest.toml"])
    assert files["Manifest.toml"].startswith("# provtrace env R1 --format julia\n")
    assert project == {"deps": {"Example": "7876af07-990d-54b4-ab0e-23690620f79a",
                                "JSON": "682c06a0-de6a-54ab-a142-c8b1cf79cde6"}}
    assert manifest["manifest_format"] == "2.0" and manifest["julia_version"] == "1.10.4"
    deps = manifest["deps"]
    # [[deps.NAME]]: an array of one table per name, as Pkg writes it.
    assert all(isinstance(v, list) and len(v) == 1 for v in deps.values())
    example, json_pkg = deps["Example"][0], deps["JSON"][0]
    assert example == {"git-tree-sha1": "46e44e869b4d90b96bd8ed1fdcf32244fddfb6cc",
                       "uuid": "7876af07-990d-54b4-ab0e-23690620f79a", "version": "0.5.3"}
    assert json_pkg["deps"] == ["Dates", "Mmap", "Parsers", "Unicode"]
    # closed under deps from the manifest the run resolved against: stdlibs carry only uuid (+deps)
    assert {"Dates", "Mmap", "Parsers", "Printf", "Unicode"} <= set(deps)
    assert deps["Mmap"][0] == {"uuid": "a63ad114-7e13-5084-954f-fe012c677804"}
    assert deps["Parsers"][0]["version"] == "2.8.1"
    for name, (entry,) in deps.items():
        assert len(entry["uuid"]) == UUID_LEN, name
        if "version" in entry:
            assert len(entry["git-tree-sha1"]) == 40
    for uuid_name, uuid in project["deps"].items():
        assert deps[uuid_name][0]["uuid"] == uuid
    # NoProject has no UUID anywhere: left out, and said so; so are deps the fixture manifest lacks.
    assert "NoProject" not in deps
    assert any("NoProject" in w for w in warnings)
    assert any("PrecompileTools (needed by Parsers)" in w for w in warnings)


def test_julia_writes_both_files_into_a_directory(tmp_path):
    written = M.write(M.build(_julia_context(), "julia", "R1"), str(tmp_path / "env"))
    assert sorted(os.path.basename(p) for p in written) == ["Manifest.toml", "Project.toml"]
    tomllib.loads((tmp_path / "env" / "Manifest.toml").read_text())


def test_no_julia_packages_is_an_empty_valid_manifest():
    m = M.build({"packages": []}, "julia", "R1")
    assert tomllib.loads(m.files["Manifest.toml"]) == {"manifest_format": "2.0"}
    assert any("loaded no Julia packages" in w for w in m.warnings)


# -- requirements.txt ----------------------------------------------------------

def _dist(site, name, version, requires=(), editable=False):
    meta = site / f"{name.replace('-', '_')}-{version}.dist-info"
    meta.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (meta / "METADATA").write_text("\n".join(lines) + "\n")
    if editable:
        (meta / "direct_url.json").write_text(json.dumps({"url": "file:///src", "dir_info": {"editable": True}}))
    return str(meta)


def _pypi_ctx(site, used, python="3.11.2"):
    return {"interpreters": [{"name": "python", "version": python, "implementation": "CPython"}],
            "arch": "x86_64",
            "packages": [{"ecosystem": "pypi", "name": n, "version": v, "location": loc} for n, v, loc in used]}


@pytest.fixture
def site(tmp_path):
    return tmp_path / "venv" / "lib" / "python3.11" / "site-packages"


def test_closure_evaluates_markers_for_the_runs_interpreter(site):
    top = _dist(site, "top", "1.0", ['old-only; python_version < "3.9"', "dep[fast]>=2",
                                      'winonly; sys_platform == "win32"', 'extra-thing; extra == "docs"'])
    _dist(site, "old-only", "0.1")
    _dist(site, "dep", "2.5", ['speedup; extra == "fast"', 'slowpath; extra == "slow"'])
    _dist(site, "speedup", "3.0")
    pins = close_over_dependencies(_pypi_ctx(site, [("top", "1.0", top)]))
    assert {k: d.version for k, d in pins.pins.items()} == {"top": "1.0", "dep": "2.5", "speedup": "3.0"}
    old = close_over_dependencies(_pypi_ctx(site, [("top", "1.0", top)], python="3.8.10"))
    assert "old-only" in old.pins  # the recorded interpreter decides, not the one running provtrace


def test_unresolved_and_skipped_are_named(site, tmp_path):
    top = _dist(site, "top", "1.0", ["missing-dep", "dep<2"])
    _dist(site, "dep", "2.5")
    mine = _dist(site, "mine", "0.0.1", editable=True)
    debian = _dist(tmp_path / "usr/lib/python3/dist-packages", "yaml-deb", "6.0")
    text, warnings = render_requirements(_pypi_ctx(site, [("top", "1.0", top), ("mine", "0.0.1", mine),
                                                          ("yaml-deb", "6.0", debian)]), "R1", hashes=False)
    assert "# unresolved: missing-dep (needed by top): not installed beside it" in text
    assert "does not satisfy it" in text
    assert "# skipped: mine 0.0.1: an editable install" in text
    assert "# skipped: yaml-deb 6.0: Debian's dist-packages" in text
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["dep==2.5", "top==1.0"]
    assert any("could not be resolved" in w for w in warnings)


class _FakePyPI(BaseHTTPRequestHandler):
    """PyPI's JSON API for two releases: `top` by version, `dep` only in the project document."""

    def do_GET(self):  # noqa: N802
        docs = {"/pypi/top/1.0/json": {"urls": [{"digests": {"sha256": "a" * 64}},
                                               {"digests": {"sha256": "b" * 64}}]},
                "/pypi/dep/json": {"releases": {"2.5": [{"digests": {"sha256": "c" * 64}}]}}}
        doc = docs.get(self.path)
        self.send_response(200 if doc else 404)
        self.end_headers()
        if doc:
            self.wfile.write(json.dumps(doc).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def pypi():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePyPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()


def test_hashes_come_from_the_index(site, pypi):
    top = _dist(site, "top", "1.0", ["dep"])
    _dist(site, "dep", "2.5")
    _dist(site, "gone", "9")
    text, warnings = render_requirements(_pypi_ctx(site, [("top", "1.0", top)]), "R1", index=pypi)
    assert "dep==2.5 \\\n    --hash=sha256:" + "c" * 64 in text
    assert f"top==1.0 \\\n    --hash=sha256:{'a' * 64} \\\n    --hash=sha256:{'b' * 64}" in text
    assert warnings == []


def test_a_release_missing_from_the_index_is_left_out_loudly(site, pypi):
    lone = _dist(site, "lone", "1.0")
    text, warnings = render_requirements(_pypi_ctx(site, [("lone", "1.0", lone)]), "R1", index=pypi)
    assert "lone==" not in text and "# skipped: lone 1.0: no such release on PyPI" in text
    assert any("not on PyPI" in w for w in warnings)


def test_unreachable_index_gives_plain_pins_and_says_so(site):
    top = _dist(site, "top", "1.0")
    text, warnings = render_requirements(_pypi_ctx(site, [("top", "1.0", top)]), "R1",
                                         index="http://127.0.0.1:9/pypi")
    assert "top==1.0\n" in text and "--hash" not in text
    assert "WITHOUT hashes: PyPI could not be reached" in text
    assert any("PyPI could not be reached" in w for w in warnings)


# -- cells, apt, dockerfile ----------------------------------------------------

DOC = {"run": {"id": "R1"},
       "context": {"os_release": {"ID": "debian", "VERSION_ID": "12"}, "arch": "x86_64",
                   "packages": [{"ecosystem": "deb", "name": "libc6", "qualified_name": "libc6:amd64",
                                 "version": "2.36-9"}],
                   "interpreters": [{"name": "python", "version": "3.11.2"}]},
       "cells": [{"id": "abc-1", "index": 1, "context": {
                      "packages": [{"ecosystem": "deb", "name": "zlib1g", "qualified_name": "zlib1g:amd64",
                                    "version": None}], "libraries": [], "interpreters": []}},
                 {"id": "abd-2", "index": 2, "context": {}}]}


def test_a_cell_has_its_own_packages_and_its_runs_host():
    by_id = M.cell_context(DOC, "abc-1")
    assert by_id == M.cell_context(DOC, "1") == M.cell_context(DOC, "abc")
    assert [p["name"] for p in by_id["packages"]] == ["zlib1g"]
    assert by_id["os_release"]["ID"] == "debian" and by_id["interpreters"][0]["name"] == "python"
    with pytest.raises(UsageError, match="2 cells match"):
        M.cell_context(DOC, "ab")
    with pytest.raises(UsageError, match="no cell 'zz'"):
        M.cell_context(DOC, "zz")
    assert M.split_ref("R1:abc-1") == ("R1", "abc-1") and M.split_ref("last") == ("last", None)


def test_apt_lines_and_unknown_versions():
    m = M.build(M.cell_context(DOC, "1"), "apt", "R1:1")
    assert m.files["apt.txt"] == "zlib1g:amd64\n"
    assert any("no version recorded for zlib1g:amd64" in w for w in m.warnings)
    assert M.build(DOC["context"], "apt", "R1").files["apt.txt"] == "libc6:amd64=2.36-9\n"


def test_dockerfile_base_from_os_release_or_asked_for():
    m = M.build(DOC["context"], "dockerfile", "R1", hashes=False)
    assert "\nFROM debian:12\n" in m.files["Dockerfile"] and list(m.files) == ["Dockerfile"]
    with pytest.raises(UsageError, match="--base"):
        M.build({"packages": []}, "dockerfile", "R1")
    assert "\nFROM ubuntu:24.04\n" in M.build({}, "dockerfile", "R1", base="ubuntu:24.04").files["Dockerfile"]
