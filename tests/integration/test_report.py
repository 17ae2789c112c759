"""`provtrace report` on real traced runs, rendered by a real headless Chromium:
what a reader sees (loss banner first, charts, the lineage picture), hostile
file names shown as text, and a missing Graphviz said in the page and once on
stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from .browser import inspect, screenshot
from .helpers import PY, pt

pytestmark = pytest.mark.privileged

# allocates and touches ~120 MB, burns CPU, writes its output
JOB = ("import sys\n"
       "b = bytearray(120 * 1024 * 1024)\n"
       "for i in range(0, len(b), 4096): b[i] = 1\n"
       "x = sum(i * i for i in range(2_000_000))\n"
       "open(sys.argv[1], 'w').write(str(x))\n")


def _report(db, tmp_path, *extra, env=None) -> tuple[str, os.PathLike]:
    out = tmp_path / "run.html"
    r = pt("report", "last", "--db", str(db), "-o", str(out), *extra, env=env)
    assert r.returncode == 0, r.stderr
    return r.stderr, out


def test_report_of_a_traced_job_as_chromium_lays_it_out(tmp_path):
    db, work = tmp_path / "s.db", tmp_path / "w"
    work.mkdir()
    (work / "in.csv").write_text("a\n1\n")
    job = [PY, "-c", JOB + "open('in.csv').read()\n", "out.csv"]
    # two runs of one job (the across-runs charts), and another command between them
    pt("run", "--db", str(db), "--", *job, cwd=work, check=True)
    pt("run", "--db", str(db), "--", "true", cwd=work, check=True)
    pt("run", "--db", str(db), "--", *job, cwd=work, check=True)
    err, page = _report(db, tmp_path)
    assert err == ""
    seen = inspect(page, ["#complete", "#loss", "#by-run", "img.lineage"], tmp_path)
    assert seen["boxes"]["#loss"] is None and seen["boxes"]["#complete"]["visible"]
    assert seen["boxes"]["#complete"]["top"] < 200, "completeness is said at the top"
    text = seen["text"]
    for heading in ("Summary", "Resources", "Across runs of the same job", "Lineage of the outputs",
                    "Environment", "Stale status"):
        assert heading in text
    assert str(work / "out.csv") in text and str(work / "in.csv") in text
    assert "(this run)" in text and "Fresh" in text
    # 5 metrics x 2 runs of the job (not the other command), and the Graphviz picture decoded
    assert seen["bars"] == 10
    (img,) = [i for i in seen["images"] if i["cls"] == "lineage"]
    assert img["complete"] and img["natural_width"] > 100
    assert seen["boxes"]["img.lineage"]["visible"]
    png = Image.open(screenshot(page, tmp_path, (1200, 1600))).convert("RGB")
    assert png.size == (1200, 1600)
    assert len(set(png.resize((120, 160)).get_flattened_data())) > 20, "the screenshot is not blank"


C32 = ('int main(void) { long r;\n'
       '  __asm__ volatile ("int $0x80" : "=a"(r) : "a"(20) : "memory"); /* i386 getpid */\n'
       '  return 0; }\n')


def test_a_run_with_lost_events_says_so_first(tmp_path):
    """A real loss: an i386 syscall that the ptrace backend cannot decode is counted lost."""
    (tmp_path / "c32.c").write_text(C32)
    subprocess.run(["gcc", "-O0", "-o", str(tmp_path / "c32"), str(tmp_path / "c32.c")], check=True)
    db = tmp_path / "s.db"
    pt("run", "--backend", "ptrace", "--db", str(db), "--", str(tmp_path / "c32"), cwd=tmp_path)
    doc = json.loads(pt("show", "last", "--json", "--db", str(db), check=True).stdout)
    assert doc["run"]["lost_events"] == 1 and not doc["run"]["complete"]
    _, page = _report(db, tmp_path)
    seen = inspect(page, ["#loss", "#summary"], tmp_path)
    loss = seen["boxes"]["#loss"]
    assert loss and loss["visible"], "the loss banner is shown"
    assert loss["top"] < seen["boxes"]["#summary"]["top"], "above the summary"
    assert loss["top"] < 200 and loss["width"] > 800, "at the top, across the page"
    assert loss["background"] != "rgba(0, 0, 0, 0)"
    assert "1 events were lost" in loss["text"] and "compat_syscalls 1" in loss["text"]
    assert "Complete: no events were lost" not in seen["text"]


HOSTILE_DIR = "<script>window.parent.pwned=1;document.title='PWNED'</script>"
HOSTILE_FILE = "<img src=x onerror=\"window.parent.pwned=2\">&amp;.csv"


def test_hostile_file_names_are_shown_as_text(tmp_path):
    db, work = tmp_path / "s.db", tmp_path / "w"
    (work / HOSTILE_DIR).mkdir(parents=True)  # '/' inside the name makes it two folders
    target = work / HOSTILE_DIR / HOSTILE_FILE
    pt("run", "--db", str(db), "--", PY, "-c", "import sys; open(sys.argv[1], 'w').write('x')",
       str(target), cwd=work, check=True)
    _, page = _report(db, tmp_path)
    seen = inspect(page, [], tmp_path)
    assert seen["pwned"] == 0 and seen["scripts"] == 0
    assert seen["title"].startswith("provtrace report")
    assert [i["cls"] for i in seen["images"]] == ["lineage"], "no image from a file name"
    assert str(target) in seen["text"], "the name is shown, as it is"


def test_without_graphviz_the_report_says_so(tmp_path):
    db, work = tmp_path / "s.db", tmp_path / "w"
    work.mkdir()
    pt("run", "--db", str(db), "--", PY, "-c", "open('o.csv', 'w').write('1')", cwd=work, check=True)
    bare = tmp_path / "bin"  # a PATH with no `dot` on it
    bare.mkdir()
    assert shutil.which("dot", path=str(bare)) is None
    err, page = _report(db, tmp_path, env={**os.environ, "PATH": str(bare)})
    assert err.count("\n") == 1 and "warning: lineage picture left out" in err and "graphviz" in err
    seen = inspect(page, ["#lineage-note"], tmp_path)
    note = seen["boxes"]["#lineage-note"]
    assert note["visible"] and "lineage picture is missing" in note["text"] and "Graphviz" in note["text"]
    assert seen["images"] == []


def test_bad_run_is_one_line(tmp_path):
    pt("run", "--db", str(tmp_path / "s.db"), "--", "true", check=True)
    r = pt("report", "nosuchrun", "--db", str(tmp_path / "s.db"), "-o", str(tmp_path / "r.html"))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = pt("report", "last", "--db", str(tmp_path / "s.db"), "-o", str(tmp_path / "no" / "r.html"))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr
