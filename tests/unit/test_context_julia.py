"""Julia packages on fixture trees that copy real depot layouts (no Julia here)."""

from __future__ import annotations

import os
import shutil

import pytest

from provtrace.tracer.context.julia import (
    JuliaPackages, crc32c, manifest_entries, package_dir_of, version_slug,
)
from provtrace.tracer.context.packages import PackageResolver

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "context", "julia")
EXAMPLE_UUID = "7876af07-990d-54b4-ab0e-23690620f79a"
EXAMPLE_TREE = "46e44e869b4d90b96bd8ed1fdcf32244fddfb6cc"


@pytest.fixture
def tree(tmp_path) -> str:
    """A private copy, so tests can add files without touching the fixtures."""
    dest = tmp_path / "julia"
    shutil.copytree(FIXTURES, dest)
    return str(dest)


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_version_slug_matches_real_install_paths() -> None:
    # Real paths seen on users' machines: packages/Example/aqsx3, packages/JSON/93Ea8.
    assert version_slug(EXAMPLE_UUID, EXAMPLE_TREE) == "aqsx3"
    assert version_slug(EXAMPLE_UUID, EXAMPLE_TREE, 4) == "aqsx"
    assert version_slug("682c06a0-de6a-54ab-a142-c8b1cf79cde6",
                        "31e996f0a15c7b280ba9f76636b3ff9e2ae58c9a") == "93Ea8"


def test_package_dir_of() -> None:
    pkg = package_dir_of("/home/u/.julia/packages/JSON/93Ea8/src/Parser/Parser.jl")
    assert pkg is not None
    assert (pkg.depot, pkg.name, pkg.slug) == ("/home/u/.julia", "JSON", "93Ea8")
    assert pkg.path == "/home/u/.julia/packages/JSON/93Ea8"
    assert package_dir_of("/home/u/.julia/packages/JSON") is None
    assert package_dir_of("/srv/packages/readme.txt") is None


def test_default_environment_manifest_v2(tree: str) -> None:
    touched = [f"{tree}/depot/packages/Example/aqsx3/src/Example.jl",
               f"{tree}/depot/packages/JSON/93Ea8/src/JSON.jl",
               f"{tree}/depot/packages/JSON/93Ea8/src/Parser/Parser.jl"]
    found = by_name(JuliaPackages().packages_for(touched))
    assert set(found) == {"Example", "JSON"}
    example = found["Example"]
    assert example["version"] == "0.5.3"
    assert example["hash"] == f"git-tree-sha1:{EXAMPLE_TREE}"
    assert example["uuid"] == EXAMPLE_UUID
    assert example["ecosystem"] == "julia"
    # v1.10 is newer than v1.6 and its entry's slug matches; v1.6's does not.
    assert example["manifest"] == f"{tree}/depot/environments/v1.10/Manifest.toml"
    assert found["JSON"]["version"] == "0.21.4"


def test_manifest_read_by_the_run_wins_old_format(tree: str) -> None:
    touched = [f"{tree}/project_v1/Project.toml", f"{tree}/project_v1/Manifest.toml",
               f"{tree}/depot/packages/Example/aqsx3/src/Example.jl"]
    [example] = JuliaPackages().packages_for(touched)
    assert example["manifest"] == f"{tree}/project_v1/Manifest.toml"
    assert example["version"] == "0.5.3"
    assert example["hash"] == f"git-tree-sha1:{EXAMPLE_TREE}"


def test_julia_project_env_points_at_manifest(tree: str) -> None:
    env = {"JULIA_PROJECT": f"{tree}/project_v2"}
    [json_pkg] = JuliaPackages().packages_for(
        [f"{tree}/depot/packages/JSON/93Ea8/src/JSON.jl"], env)
    assert json_pkg["manifest"] == f"{tree}/project_v2/Manifest.toml"
    assert json_pkg["version"] == "0.21.4"


def test_slug_mismatch_falls_back_to_project_toml(tree: str) -> None:
    [stale] = JuliaPackages().packages_for([f"{tree}/depot/packages/Stale/AAAAA/src/Stale.jl"])
    assert stale["version"] == "2.0.1"  # the tree's own Project.toml, not the manifest's 1.9.9
    assert stale["hash"] is None and stale["manifest"] is None


def test_no_project_no_manifest_gives_name_only(tree: str) -> None:
    [pkg] = JuliaPackages().packages_for(
        [f"{tree}/depot/packages/NoProject/zzzz1/src/NoProject.jl"])
    assert pkg["name"] == "NoProject" and pkg["version"] is None and pkg["slug"] == "zzzz1"


def test_only_old_manifest_present(tree: str) -> None:
    os.remove(f"{tree}/depot/environments/v1.10/Manifest.toml")
    # v1.6's Example tree gives a different slug, so the Project.toml is used.
    [example] = JuliaPackages().packages_for(
        [f"{tree}/depot/packages/Example/aqsx3/src/Example.jl"])
    assert example["version"] == "0.5.3" and example["hash"] is None


def test_broken_manifest_is_skipped(tree: str) -> None:
    with open(f"{tree}/depot/environments/v1.10/Manifest.toml", "w") as f:
        f.write("[[deps.Example]\nthis is not toml")
    [example] = JuliaPackages().packages_for(
        [f"{tree}/depot/packages/Example/aqsx3/src/Example.jl"])
    assert example["version"] == "0.5.3"  # from Project.toml


def test_manifest_entries_both_formats() -> None:
    v2 = {"julia_version": "1.10.4", "manifest_format": "2.0",
          "deps": {"A": [{"uuid": "u", "version": "1.0.0"}]}}
    v1 = {"A": [{"uuid": "u", "version": "0.9.0"}], "B": [{"uuid": "w"}]}
    assert manifest_entries(v2) == {"A": [{"uuid": "u", "version": "1.0.0"}]}
    assert set(manifest_entries(v1)) == {"A", "B"}


def test_resolver_includes_julia(tree: str) -> None:
    entries = PackageResolver().packages_for(
        [f"{tree}/depot/packages/Example/aqsx3/src/Example.jl"])
    assert [(e["ecosystem"], e["name"], e["version"]) for e in entries] == [
        ("julia", "Example", "0.5.3")]


def test_manifest_change_is_seen(tree: str) -> None:
    packages = JuliaPackages()
    touched = [f"{tree}/depot/packages/Example/aqsx3/src/Example.jl"]
    assert packages.packages_for(touched)[0]["version"] == "0.5.3"
    manifest = f"{tree}/depot/environments/v1.10/Manifest.toml"
    text = open(manifest).read().replace('version = "0.5.3"', 'version = "0.5.3-edited"')
    with open(manifest, "w") as f:
        f.write(text)
    os.utime(manifest, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    assert packages.packages_for(touched)[0]["version"] == "0.5.3-edited"
