"""Lineage pictures of an ordinary traced pipeline (issue 17): a Python step, an R
step through Rscript and a shell step, traced with the session's real probes,
drawn by the real CLI and the real Graphviz. The issue measured such a picture
at 7,908 x 6,979 px, mostly fontconfig and library files."""

from __future__ import annotations

import os
import shutil
import struct
import textwrap

import pydot
import pytest

from ..unit.test_export_lineage_picture import check_mermaid
from .helpers import PY, pt, trace

pytestmark = pytest.mark.privileged

STEP1 = """\
import csv
with open("raw.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["x", "y"])
    w.writerows([i, i * i] for i in range(10))
"""
STEP2 = """\
d <- read.csv("raw.csv")
d$z <- d$x + d$y
write.csv(d, "mid.csv", row.names = FALSE)
"""


@pytest.fixture(scope="module")
def pipeline(capture, tmp_path_factory):
    if shutil.which("Rscript") is None:
        pytest.fail("Rscript is missing: setup.sh installs r-base-core (r-cran-irkernel)")
    work = tmp_path_factory.mktemp("pictures")
    db = str(work / "store.db")
    (work / "step1.py").write_text(STEP1)
    (work / "step2.R").write_text(STEP2)
    for argv in ([PY, "step1.py"], ["Rscript", "step2.R"], ["sh", "-c", "sort mid.csv | head -5 > final.txt"]):
        code, _doc = trace(capture, argv, cwd=work, db=db)
        assert code == 0, argv
    return work, db


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _dot_nodes(text: str) -> dict[str, str]:
    (g,) = pydot.graph_from_dot_data(text)
    return {n.get_name().strip('"'): (n.get("label") or "").strip('"')
            for sub in [g, *g.get_subgraphs()] for n in sub.get_nodes()
            if n.get_name() not in ("node", "edge", "graph")}


def test_the_pipeline_draws_small_with_data_files_only(pipeline):
    work, db = pipeline
    final = str(work / "final.txt")
    png = work / "final.png"
    pt("lineage", final, "--db", db, "--format", "png", "-o", str(png), check=True)
    width, height = _png_size(png)
    assert 200 < width < 2000 and 100 < height < 2000, (width, height)
    nodes = _dot_nodes(pt("lineage", final, "--db", db, "--format", "dot", check=True).stdout)
    assert len(nodes) <= 30, sorted(nodes)
    files = {n.split(":", 1)[1].rsplit("@", 1)[0] for n in nodes if n.startswith("file:")}
    # the steps' folder may be there too: Python and R list it (a directory listing is a read of
    # the directory, docs/capture.md), and that is data, not a library
    assert files - {str(work)} == {str(work / f) for f in ("final.txt", "mid.csv", "raw.csv", "step1.py", "step2.R")}
    # the interpreters' libraries: one summary node each, not hundreds of files
    summaries = [label for n, label in nodes.items() if n.startswith("hidden:")]
    assert any(s.startswith("python") and "library files" in s for s in summaries), summaries
    assert any(s.startswith("R: ") and "library files" in s for s in summaries), summaries


def test_the_picture_groups_each_run(pipeline):
    work, db = pipeline
    (g,) = pydot.graph_from_dot_data(pt("lineage", str(work / "final.txt"), "--db", db, "--format", "dot",
                                        check=True).stdout)
    runs = [s.get("label").strip('"') for s in g.get_subgraphs()]
    assert len(runs) == 3 and all(r.startswith("run ") for r in runs)


def test_mermaid_of_the_pipeline_is_well_formed(pipeline):
    work, db = pipeline
    text = pt("lineage", str(work / "final.txt"), "--db", db, "--format", "mermaid", check=True).stdout
    nodes, edges = check_mermaid(text)
    assert len(nodes) <= 30 and text.count("subgraph ") == 3
    assert {rel for _a, rel, _b in edges} >= {"read", "wrote", "pipe"}


def test_all_files_draws_libraries_and_the_cap_says_what_to_do(pipeline):
    work, db = pipeline
    final = str(work / "final.txt")
    r = pt("lineage", final, "--db", db, "--format", "svg", "--all-files")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "--depth" in r.stderr and "Traceback" not in r.stderr
    nodes = _dot_nodes(pt("lineage", final, "--db", db, "--format", "dot", "--all-files", "--max-nodes", "2000",
                          check=True).stdout)
    assert len(nodes) > 100 and not any(n.startswith("hidden:") for n in nodes)
    assert any(n.startswith("file:") and ".so" in n for n in nodes)


def test_missing_graphviz_is_one_line(pipeline):
    work, db = pipeline
    env = {**os.environ, "PATH": "/nonexistent"}
    r = pt("lineage", str(work / "final.txt"), "--db", db, "--format", "png", "-o", str(work / "x.png"), env=env)
    assert r.returncode == 2 and not (work / "x.png").exists()
    assert r.stderr.count("\n") == 1 and "graphviz" in r.stderr, r.stderr


def test_text_lists_data_files_only(pipeline):
    work, db = pipeline
    text = pt("lineage", str(work / "final.txt"), "--db", db, check=True).stdout
    assert ".so" not in text and "fontconfig" not in text
    assert textwrap.dedent(text).startswith("upstream lineage of ")
