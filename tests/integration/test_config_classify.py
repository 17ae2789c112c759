"""Noise control on real traced runs (issue 14): the config file's [classify]
rules change what show, lineage, stale and export show, never what the store
holds; the better default classification sees a virtualenv whatever its name."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from provtrace.tracer.store import sqlite as S

from .helpers import PROVTRACE, running_daemon

pytestmark = pytest.mark.privileged

SCRIPT = ("cat in.csv > out.csv; mkdir -p scratch; cat in.csv > scratch/part.csv; "
          "cat in.csv > run.log; cat in.csv > o.tmp && mv o.tmp final.csv")


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """One real traced run, as root, into its own store; the config locations in tmp."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    base = tmp_path_factory.mktemp("noise")
    work = base / "work"
    work.mkdir()
    (work / "in.csv").write_text("a,b\n1,2\n")
    env = {**os.environ, "PROVTRACE_SYSTEM_CONFIG": str(base / "etc.toml"),
           "XDG_CONFIG_HOME": str(base / "xdg"), "PROVTRACE_DB": str(base / "s.db")}
    env.pop("PROVTRACE_CONFIG", None)
    r = subprocess.run([PROVTRACE, "run", "--db", str(base / "s.db"), "--", "sh", "-c", SCRIPT],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rules = base / "rules.toml"
    rules.write_text(f'[classify]\n"{work}/scratch/**" = "temp"\n"**/*.log" = "system"\n')
    return {"base": base, "work": work, "db": str(base / "s.db"), "env": env, "rules": str(rules)}


def pt(t, *args, config: str | None = None):
    env = dict(t["env"])
    if config is not None:
        env["PROVTRACE_CONFIG"] = config
    return subprocess.run([PROVTRACE, *args], cwd=t["work"], env=env, capture_output=True,
                          text=True, timeout=300)


def no_config(tmp_path, **extra) -> dict:
    """An environment in which no config file exists (none in /etc or the home either)."""
    env = {**os.environ, "PROVTRACE_SYSTEM_CONFIG": str(tmp_path / "no-etc.toml"),
           "XDG_CONFIG_HOME": str(tmp_path / "no-xdg"), **extra}
    env.pop("PROVTRACE_CONFIG", None)
    return env


def raw_records(db: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT seq, rid, kind, p1, p2, body, hash FROM records ORDER BY seq").fetchall()
    finally:
        con.close()


def kinds(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in doc["files"]:
        out.setdefault(os.path.basename(f["path"]), set()).add(f["kind"])
    return out


def test_rules_change_views_not_records(traced):
    before = raw_records(traced["db"])
    plain = json.loads(pt(traced, "show", "last", "--json").stdout)
    r = pt(traced, "show", "last", "--json", config=traced["rules"])
    assert r.returncode == 0, r.stderr
    ruled = json.loads(r.stdout)
    assert kinds(plain)["part.csv"] == {"data"} and kinds(plain)["run.log"] == {"data"}
    assert kinds(ruled)["part.csv"] == {"temp"} and kinds(ruled)["run.log"] == {"system"}
    assert kinds(ruled)["out.csv"] == {"data"} and kinds(ruled)["in.csv"] == {"data"}
    # the text view hides what a rule made system
    text = pt(traced, "show", "last", config=traced["rules"]).stdout
    listed = text.split("\nfiles (", 1)[1]
    assert "/run.log" not in listed and "/out.csv" in listed
    # lineage: the walk no longer goes through the log
    src = str(traced["work"] / "in.csv")
    lin = json.loads(pt(traced, "lineage", src, "--downstream", "--json").stdout)
    lin_ruled = json.loads(pt(traced, "lineage", src, "--downstream", "--json", config=traced["rules"]).stdout)
    paths = {os.path.basename(n.get("path") or "") for n in lin["nodes"]}
    paths_ruled = {os.path.basename(n.get("path") or "") for n in lin_ruled["nodes"]}
    assert {"run.log", "out.csv", "part.csv"} <= paths
    assert "run.log" not in paths_ruled and {"out.csv", "part.csv"} <= paths_ruled
    assert pt(traced, "stale", "--json", config=traced["rules"]).returncode == 0
    # the store is byte for byte what capture wrote, with the kinds of capture time
    assert raw_records(traced["db"]) == before
    con = sqlite3.connect(traced["db"])
    stored = con.execute("SELECT r.body FROM records r JOIN paths p ON p.id=r.p1 WHERE p.path=? AND r.kind=?",
                         (os.fsencode(str(traced["work"] / "scratch" / "part.csv")), S.FILE)).fetchall()
    con.close()
    assert stored and all(json.loads(b)[7] == "d" for (b,) in stored)


def test_export_data_only_leaves_out_reclassified_files(traced, tmp_path):
    out = tmp_path / "d.json"
    r = pt(traced, "export", "last", "--data-only", "--format", "json", "-o", str(out), config=traced["rules"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    names = {os.path.basename(f["path"]) for f in doc["files"]}
    assert {"in.csv", "out.csv"} <= names
    assert not names & {"part.csv", "run.log"}
    assert all(f["kind"] in ("data", "temp") for f in doc["files"])
    assert "o.tmp" in names  # the temp name the atomic write of final.csv went through
    assert not doc["context"].get("libraries")
    pids = {f["pid"] for f in doc["files"]} | {r["pid"] for r in doc["renames"]}
    assert {p["pid"] for p in doc["processes"]} == pids
    for fmt in ("prov-json", "openlineage", "dot"):
        dest = tmp_path / f"d.{fmt}"
        r = pt(traced, "export", "last", "--data-only", "--format", fmt, "-o", str(dest), config=traced["rules"])
        assert r.returncode == 0, r.stderr
        data = dest.read_text()
        work = str(traced["work"])  # whole paths: argv also names the files
        assert f"{work}/out.csv" in data and f"{work}/final.csv" in data
        assert f"{work}/scratch/part.csv" not in data and f"{work}/run.log" not in data
        assert "/usr/lib" not in data
    # without the rules, the same export keeps them as data
    r = pt(traced, "export", "last", "--data-only", "--format", "json", "-o", "-")
    assert {"part.csv", "run.log"} <= {os.path.basename(f["path"]) for f in json.loads(r.stdout)["files"]}


@pytest.mark.parametrize("verb", [("show", "last"), ("lineage", "in.csv"), ("stale",), ("diff", "last", "last"),
                                  ("export", "last", "--format", "dot", "-o", "-")])
def test_bad_config_is_one_line_for_query_verbs(traced, verb):
    bad = traced["base"] / "bad.toml"
    bad.write_text('[classify]\n"/x/**" = "nonsense"\n')
    r = pt(traced, *verb, config=str(bad))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("provtrace: ")
    assert str(bad) in r.stderr and "'/x/**'" in r.stderr and "nonsense" in r.stderr
    missing = traced["base"] / "typo.toml"  # a file named on purpose must exist
    r = pt(traced, *verb, config=str(missing))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and f"{missing}: no such file" in r.stderr


def test_capture_never_fails_because_of_config(traced, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[classify\n")
    env = {**traced["env"], "PROVTRACE_CONFIG": str(bad)}
    r = subprocess.run([PROVTRACE, "run", "--db", str(tmp_path / "s.db"), "--json-out", str(tmp_path / "r.json"),
                        "--", "sh", "-c", "echo x > o.txt"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["files"]
    assert "warning" in r.stderr and str(bad) in r.stderr and "config ignored" in r.stderr


def test_system_file_then_user_file(traced):
    (traced["base"] / "etc.toml").write_text('[classify]\n"**/*.csv" = "library"\n')
    xdg = traced["base"] / "xdg" / "provtrace"
    xdg.mkdir(parents=True, exist_ok=True)
    try:
        ruled = json.loads(pt(traced, "show", "last", "--json").stdout)
        assert kinds(ruled)["out.csv"] == {"library"}
        (xdg / "config.toml").write_text('[classify]\n"**/out.csv" = "data"\n')
        ruled = json.loads(pt(traced, "show", "last", "--json").stdout)
        assert kinds(ruled)["out.csv"] == {"data"} and kinds(ruled)["in.csv"] == {"library"}
    finally:
        (traced["base"] / "etc.toml").unlink()
        (xdg / "config.toml").unlink(missing_ok=True)


def test_a_venv_of_any_name_is_library(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    env_dir = tmp_path / "not-a-usual-name"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    (tmp_path / "in.txt").write_text("x\n")
    r = subprocess.run([PROVTRACE, "run", "--db", str(tmp_path / "s.db"), "--json-out", str(tmp_path / "r.json"),
                        "--", str(env_dir / "bin" / "python"), "-c",
                        "open('out.txt', 'w').write(open('in.txt').read())"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=no_config(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    cfg = [f for f in doc["files"] if f["path"] == str(env_dir / "pyvenv.cfg")]
    assert cfg and all(f["kind"] == "library" for f in cfg)
    data = {f["path"] for f in doc["files"] if f["kind"] == "data"}
    assert data == {str(tmp_path / "in.txt"), str(tmp_path / "out.txt")}


def test_captured_stdout_and_stderr_files_are_not_data(tmp_path):
    """`provtrace run -- CMD > out.log 2> err.log`: the logs the command was handed
    are system; a file the command opens itself, even by a redirect inside
    the traced shell, stays data."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    env = no_config(tmp_path)
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        r = subprocess.run([PROVTRACE, "run", "--db", str(tmp_path / "s.db"), "--json-out", str(tmp_path / "r.json"),
                            "--", "sh", "-c", "echo hi; echo oops >&2; echo x > made.txt"],
                           cwd=tmp_path, env=env, stdout=out, stderr=err, timeout=300)
    assert r.returncode == 0, (tmp_path / "err.log").read_text()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert kinds(doc) == {**kinds(doc), "out.log": {"system"}, "err.log": {"system"}, "made.txt": {"data"}}
    # a rule brings a log back when a user wants it as data
    (tmp_path / "keep.toml").write_text('[classify]\n"**/out.log" = "data"\n')
    shown = subprocess.run([PROVTRACE, "show", "last", "--json", "--db", str(tmp_path / "s.db")],
                           env={**env, "PROVTRACE_CONFIG": str(tmp_path / "keep.toml")},
                           capture_output=True, text=True, timeout=300)
    assert kinds(json.loads(shown.stdout))["out.log"] == {"data"}


def test_daemon_applies_the_system_file_and_the_client_its_own(tmp_path):
    """Through a daemon: its answers follow the system config file (it serves
    every user); show/export --data-only then apply the caller's own file."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    system = tmp_path / "etc.toml"
    system.write_text('[classify]\n"**/*.tsv" = "temp"\n')
    mine = tmp_path / "mine.toml"
    mine.write_text('[classify]\n"**/b.csv" = "system"\n')
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.csv").write_text("1\n")
    env = no_config(tmp_path, PROVTRACE_SYSTEM_CONFIG=str(system))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with running_daemon(env=env) as d:
        def cli(*args, config):
            return subprocess.run([PROVTRACE, *args], cwd=work, capture_output=True, text=True, timeout=300,
                                  env={**env, "PROVTRACE_CONFIG": str(config)})
        with open(work / "run.log", "w") as log:
            r = subprocess.run([PROVTRACE, "run", "--socket", d["socket"], "--", "sh", "-c",
                                "cat in.csv > a.tsv; cat in.csv > b.csv; echo done"],
                               cwd=work, env=env, stdout=log, stderr=subprocess.PIPE, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        r = cli("show", "last", "--json", "--socket", d["socket"], config=empty)
        assert r.returncode == 0, r.stderr
        k = kinds(json.loads(r.stdout))
        assert (k["a.tsv"], k["b.csv"], k["in.csv"], k["run.log"]) == ({"temp"}, {"data"}, {"data"}, {"system"})
        k = kinds(json.loads(cli("show", "last", "--json", "--socket", d["socket"], config=mine).stdout))
        assert k["b.csv"] == {"system"} and k["a.tsv"] == {"temp"}
        r = cli("export", "last", "--data-only", "--format", "json", "-o", "-", "--socket", d["socket"], config=mine)
        assert r.returncode == 0, r.stderr
        assert {os.path.basename(f["path"]) for f in json.loads(r.stdout)["files"]} == {"in.csv"}
        bad = tmp_path / "bad.toml"
        bad.write_text("[classify]\n\"/x\" = 1\n")
        r = cli("show", "last", "--socket", d["socket"], config=bad)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and str(bad) in r.stderr


def test_a_followed_kernel_writing_to_the_servers_log_file_is_no_cell_output(tmp_path):
    """A kernel's stdout is its notebook server's (a log file under nohup or a
    service): what a cell prints at the C level lands there, and is no output."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from provtrace.tracer.store import queries as Q

    from .helpers import stored_run, until_followed, wait_for

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("kernelspec python3 not installed (setup.sh installs it)")

    def sessions(db):
        store = S.Store(db, readonly=True)
        try:
            return [r["id"] for r in Q.list_runs(store) if r["kind"] == "session"]
        finally:
            store.close()

    log_path = tmp_path / "server.log"
    with running_daemon() as d, open(log_path, "w") as log:
        km = KernelManager(kernel_name="python3")
        km.start_kernel(cwd=str(tmp_path), stdout=log, stderr=log)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            sid = wait_for(lambda: sessions(d["db"]), 60, "the daemon to discover the kernel")[0]
            until_followed(kc, d["db"], sid)
            kc.execute_interactive("import os; os.write(1, b'to the log\\n'); open('a.txt', 'w').write('x')",
                                   timeout=60)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        doc = wait_for(lambda: (lambda x: x if x["run"]["ended"] else None)(stored_run(d["db"], sid)),
                       60, "the session to end")
    assert "to the log" in log_path.read_text()
    cell = [c for c in doc["cells"] if c.get("execution_count")][-1]
    assert cell["writes"] == [f"{tmp_path}/a.txt"]
    assert {f["kind"] for f in doc["files"] if f["path"] == str(log_path)} == {"system"}
