"""Packages actually used: real venv distributions, Debian R packages, dpkg."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess

import networkx
import psutil
import pytest

from provtrace.tracer.context.cran import RPackages, parse_description
from provtrace.tracer.context.dpkg import DpkgIndex
from provtrace.tracer.context.packages import PackageResolver, packages_for
from provtrace.tracer.context.pypi import PythonPackages, site_dir_of

IRKERNEL = "/usr/lib/R/site-library/IRkernel"
R_BASE = "/usr/lib/R/library/base"


def record_hash(path: str) -> str:
    digest = hashlib.sha256(open(path, "rb").read()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def by_key(entries: list[dict]) -> dict[tuple[str, str], dict]:
    return {(e["ecosystem"], e["name"]): e for e in entries}


@pytest.fixture(scope="module")
def resolver() -> PackageResolver:
    return PackageResolver()


def test_venv_distributions_from_record(resolver: PackageResolver) -> None:
    touched = [psutil.__file__, os.path.join(os.path.dirname(networkx.__file__), "classes/graph.py")]
    found = by_key(resolver.packages_for(touched))
    ps = found[("pypi", "psutil")]
    assert ps["version"] == psutil.__version__
    assert ps["location"].endswith(f"psutil-{psutil.__version__}.dist-info")
    assert ps["hash"] == "sha256:" + hashlib.sha256(
        open(os.path.join(ps["location"], "RECORD"), "rb").read()).hexdigest()
    # The wheel's recorded hash of the touched file is the file's real hash.
    [f] = ps["files"]
    assert f["path"] == psutil.__file__
    assert f["recorded_hash"] == record_hash(psutil.__file__)
    assert found[("pypi", "networkx")]["version"] == networkx.__version__


def test_only_used_distributions_are_reported(resolver: PackageResolver) -> None:
    names = {e["name"] for e in resolver.packages_for([psutil.__file__])
             if e["ecosystem"] == "pypi"}
    assert names == {"psutil"}


def test_unlisted_pyc_maps_to_its_source(tmp_path) -> None:
    site = tmp_path / "lib/python3.11/site-packages"
    (site / "demo/__pycache__").mkdir(parents=True)
    (site / "demo/__init__.py").write_text("x = 1\n")
    (site / "demo/__pycache__/__init__.cpython-311.pyc").write_bytes(b"\0")
    info = site / "demo-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.2\n")
    (info / "RECORD").write_text("demo/__init__.py,sha256=abc,6\ndemo-1.2.dist-info/RECORD,,\n")
    hit = PythonPackages().lookup(str(site / "demo/__pycache__/__init__.cpython-311.pyc"))
    assert hit is not None and hit[0].name == "demo" and hit[1] == "sha256=abc"


def test_egg_info_top_level_and_installed_files(tmp_path) -> None:
    site = tmp_path / "dist-packages"
    (site / "mod_a").mkdir(parents=True)
    (site / "mod_a/__init__.py").write_text("")
    (site / "mod_b.py").write_text("")
    egg = site / "ModA-0.3.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: ModA\nVersion: 0.3\n")
    (egg / "top_level.txt").write_text("mod_a\n")
    egg_b = site / "ModB-2.0.egg-info"
    egg_b.mkdir()
    (egg_b / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: ModB\nVersion: 2.0\n")
    (egg_b / "installed-files.txt").write_text("../mod_b.py\nPKG-INFO\n")
    found = by_key(PythonPackages().packages_for([str(site / "mod_a/__init__.py"),
                                                  str(site / "mod_b.py")]))
    assert found[("pypi", "ModA")]["version"] == "0.3"
    assert found[("pypi", "ModB")]["version"] == "2.0"


def test_debian_dist_packages(resolver: PackageResolver) -> None:
    yaml_init = "/usr/lib/python3/dist-packages/yaml/__init__.py"
    jwt_init = "/usr/lib/python3/dist-packages/jwt/__init__.py"
    if not (os.path.exists(yaml_init) and os.path.exists(jwt_init)):
        pytest.skip("python3-yaml / python3-jwt not installed")
    found = by_key(resolver.packages_for([yaml_init, jwt_init]))
    assert found[("pypi", "PyYAML")]["files"][0]["recorded_hash"] == record_hash(yaml_init)
    assert found[("pypi", "PyJWT")]["version"]  # egg-info, via top_level.txt
    assert found[("deb", "python3-yaml")]["version"]
    assert found[("deb", "python3-jwt")]["version"]


def test_site_dir_of() -> None:
    assert site_dir_of("/v/lib/python3.11/site-packages/a/b.py") == "/v/lib/python3.11/site-packages"
    assert site_dir_of("/usr/lib/python3/dist-packages/x.py") == "/usr/lib/python3/dist-packages"
    assert site_dir_of("/home/u/data.csv") is None


@pytest.mark.skipif(not os.path.isdir(IRKERNEL), reason="r-cran-irkernel not installed")
def test_real_debian_r_packages(resolver: PackageResolver) -> None:
    touched = [f"{IRKERNEL}/R/IRkernel.rdb", f"{IRKERNEL}/kernelspec/kernel.json",
               f"{R_BASE}/R/base.rdb"]
    found = by_key(resolver.packages_for(touched))
    irkernel = found[("cran", "IRkernel")]
    fields = parse_description(open(f"{IRKERNEL}/DESCRIPTION").read())
    assert irkernel["version"] == fields["Version"]
    assert irkernel["built"] == fields["Built"] and irkernel["built"].startswith("R ")
    assert irkernel["location"] == IRKERNEL
    assert found[("cran", "base")]["version"].startswith("4.")
    assert found[("deb", "r-cran-irkernel")]["version"].startswith(fields["Version"])


def test_r_source_tree_is_not_an_installed_package(tmp_path) -> None:
    src = tmp_path / "mypkg"
    (src / "R").mkdir(parents=True)
    (src / "DESCRIPTION").write_text("Package: mypkg\nVersion: 0.1\n")
    (src / "R/f.R").write_text("f <- function() 1\n")
    assert RPackages().lookup(str(src / "R/f.R")) is None
    (src / "Meta").mkdir()
    assert RPackages().lookup(str(src / "R/f.R")).name == "mypkg"


def test_description_continuation_lines() -> None:
    fields = parse_description("Package: a\nImports: x,\n    y (>= 1)\nVersion: 1.0-2\n")
    assert fields == {"Package": "a", "Imports": "x,\ny (>= 1)", "Version": "1.0-2"}


def test_deb_versions_match_dpkg_query(resolver: PackageResolver) -> None:
    found = by_key(resolver.packages_for(["/usr/lib/x86_64-linux-gnu/libc.so.6", "/etc/hosts"]))
    expected = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libc6"],
                              capture_output=True, text=True, check=True).stdout
    assert found[("deb", "libc6")]["version"] == expected
    assert found[("deb", "libc6")]["qualified_name"] == "libc6:amd64"


def test_untouched_and_unowned_paths_give_nothing(tmp_path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    assert packages_for([str(data), "/nonexistent/file", "relative/path"]) == []


def test_entries_are_deduplicated(resolver: PackageResolver) -> None:
    entries = resolver.packages_for([psutil.__file__, psutil.__file__,
                                     "/usr/lib/x86_64-linux-gnu/libc.so.6",
                                     "/lib/x86_64-linux-gnu/libm.so.6"])
    keys = [(e["ecosystem"], e["name"]) for e in entries]
    assert len(keys) == len(set(keys))
    assert all({"name", "version", "ecosystem", "hash"} <= set(e) for e in entries)


def make_dist(site, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,sha256=x,1\n")


def test_python_upgrade_is_seen_after_refresh(tmp_path) -> None:
    site = tmp_path / "site-packages"
    (site / "demo").mkdir(parents=True)
    (site / "demo/__init__.py").write_text("")
    make_dist(site, "demo", "1.0")
    resolver = PackageResolver()
    touched = [str(site / "demo/__init__.py")]
    assert resolver.packages_for(touched)[0]["version"] == "1.0"
    shutil.rmtree(site / "demo-1.0.dist-info")  # what pip does on upgrade
    make_dist(site, "demo", "2.0")
    resolver.refresh()
    assert resolver.packages_for(touched)[0]["version"] == "2.0"


def test_r_reinstall_is_seen_after_refresh(tmp_path) -> None:
    pkg = tmp_path / "lib/foo"
    (pkg / "Meta").mkdir(parents=True)
    (pkg / "R").mkdir()
    (pkg / "R/foo.rdb").write_bytes(b"")
    (pkg / "DESCRIPTION").write_text("Package: foo\nVersion: 1.0\nBuilt: R 4.2.2; ; x; unix\n")
    resolver = PackageResolver()
    touched = [str(pkg / "R/foo.rdb")]
    assert resolver.packages_for(touched)[0]["version"] == "1.0"
    (pkg / "DESCRIPTION").write_text("Package: foo\nVersion: 1.1\nBuilt: R 4.2.2; ; y; unix\n")
    resolver.refresh()
    assert resolver.packages_for(touched)[0]["version"] == "1.1"


def test_dpkg_index_rebuilds_after_install(tmp_path) -> None:
    info = tmp_path / "info"
    info.mkdir()
    status = tmp_path / "status"
    status.write_text("Package: a\n")
    (info / "pkg-a.list").write_text("/.\n/opt/a\n/opt/a/bin\n")
    index = DpkgIndex(info_dir=str(info), status_path=str(status))
    assert index.owner("/opt/a/bin") == "pkg-a"
    assert index.owner("/opt/b/bin") is None
    (info / "pkg-b:amd64.list").write_text("/opt/b/bin\n")
    status.write_text("Package: a\n\nPackage: b\n")
    index.refresh()
    assert index.owner("/opt/b/bin") == "pkg-b:amd64"
    assert index.builds == 2
    index.refresh()  # nothing changed: no rebuild
    index.owner("/opt/a/bin")
    assert index.builds == 2


def test_dpkg_index_gives_every_listed_path_its_first_owner() -> None:
    """The compact index answers as a plain dict of this host's dpkg lists would,
    for every path dpkg lists, and None for paths it does not list."""
    import glob  # noqa: PLC0415

    lists = glob.glob("/var/lib/dpkg/info/*.list")
    if not lists:
        pytest.skip("no dpkg database here")
    expected: dict[str, str] = {}
    for list_path in lists:  # in the index's order: the first owner wins
        with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                path = line.rstrip("\n")
                if path and path != "/.":
                    expected.setdefault(path, os.path.basename(list_path)[: -len(".list")])
    index = DpkgIndex()._index()
    assert len(index) == len(expected)
    assert all(index.get(path) == owner for path, owner in expected.items())
    assert [index.get(p + ".not-listed") for p in list(expected)[:5000]] == [None] * 5000
