"""OpenLineage push (issue 17): `export --format openlineage --url` and `daemon
--openlineage-url` send events through openlineage-python's HTTP transport to a
real HTTP endpoint on loopback that validates each one against the OpenLineage
spec's JSON schema (tests/fixtures/openlineage), and that is down for part of
each test: what it did not take is spooled and sent later, never lost.

Runs are traced with the session's real probes (helpers.trace), or by a real
daemon process; the CLI is the real one (helpers.pt)."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest

from ..unit.test_export_openlineage import check_event
from .helpers import pt, running_daemon, trace, wait_for

pytestmark = pytest.mark.privileged

# few, quick retries, configured the OpenLineage way (the HTTP transport's retry setting)
FAST_RETRY = {"OPENLINEAGE__TRANSPORT__RETRY": json.dumps({"total": 2, "backoff_factor": 0.05})}


class Endpoint:
    """An OpenLineage HTTP endpoint (POST /api/v1/lineage) that validates each event; it can
    go down (its socket closed: connection refused) and come back on the same port, or
    answer 503 to the next N requests."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.errors: list[str] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        self.port = 0
        self.server: http.server.ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with endpoint.lock:
                    if endpoint.fail_next:
                        endpoint.fail_next -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    status = 201
                    try:
                        assert self.path == "/api/v1/lineage", self.path
                        event = json.loads(body)
                        check_event(event)
                        endpoint.received.append(event)
                    except (AssertionError, ValueError) as e:
                        endpoint.errors.append(f"{e}")
                        status = 400
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(e["run"]["runId"], e["eventType"]) for e in self.received]


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.down()
    assert not ep.errors, ep.errors  # every event the endpoint saw was a valid OpenLineage RunEvent


def _exported(db: str, run: str) -> list[tuple[str, str]]:
    out = pt("export", run, "--db", db, "--format", "openlineage", "-o", "-", check=True).stdout
    return [(e["run"]["runId"], e["eventType"]) for e in map(json.loads, out.splitlines())]


def _push(db: str, run: str, url: str):
    return pt("export", run, "--db", db, "--format", "openlineage", "--url", url,
              env={**os.environ, **FAST_RETRY})


def _run(capture, work, db, script) -> str:
    code, doc = trace(capture, ["sh", "-c", script], cwd=work, db=db)
    assert code == 0
    return doc["run"]["id"]


def test_push_spools_while_the_endpoint_is_down_and_sends_later(capture, work, endpoint):
    db = str(work.parent / "store.db")
    (work / "a.csv").write_text("x\n1\n")
    first = _run(capture, work, db, "sort a.csv > b.csv")
    r = _push(db, first, endpoint.url)
    assert r.returncode == 0 and r.stderr.startswith("provtrace: sent 2 OpenLineage events"), r.stderr
    assert endpoint.keys() == _exported(db, first)

    endpoint.down()  # connection refused from here on
    second = _run(capture, work, db, "cat b.csv b.csv > c.csv")
    r = _push(db, second, endpoint.url)
    assert r.returncode == 75, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert "connection refused" in r.stderr and "2 spooled" in r.stderr
    spool = db + ".openlineage-spool"
    assert [json.loads(line)["eventType"] for line in open(spool)] == ["START", "COMPLETE"]

    third = _run(capture, work, db, "wc -l c.csv > d.txt")
    assert _push(db, third, endpoint.url).returncode == 75  # spooled behind the second run's events
    endpoint.up()
    r = _push(db, first, endpoint.url)  # any push sends the spool first
    assert r.returncode == 0 and "(4 from the spool)" in r.stderr, r.stderr
    assert not os.path.exists(spool)

    got = endpoint.keys()
    assert got[2:6] == _exported(db, second) + _exported(db, third)  # in the order they were due
    assert got[6:] == _exported(db, first)  # the push that was asked for
    # nothing lost; the only duplicates are the first run's, pushed twice on purpose,
    # and identical as (runId, eventType) says
    assert sorted(set(got)) == sorted(set(_exported(db, first) + _exported(db, second) + _exported(db, third)))
    assert all(got.count(k) == 1 for k in _exported(db, second) + _exported(db, third))
    bodies: dict = {}
    for e in endpoint.received:
        bodies.setdefault((e["run"]["runId"], e["eventType"]), []).append(json.dumps(e, sort_keys=True))
    assert all(len(set(v)) == 1 for v in bodies.values())


def test_the_transport_retries_a_busy_endpoint(capture, work, endpoint):
    db = str(work.parent / "store.db")
    run = _run(capture, work, db, "echo hi > out.txt")
    endpoint.fail_next = 2  # 503 twice: the HTTP transport's own retries deliver
    r = _push(db, run, endpoint.url)
    assert r.returncode == 0, r.stderr
    assert endpoint.keys() == _exported(db, run) and not os.path.exists(db + ".openlineage-spool")


def test_unreachable_and_unconfigured_endpoints_are_one_line(capture, work):
    db = str(work.parent / "store.db")
    run = _run(capture, work, db, "echo hi > out.txt")
    r = _push(db, run, "http://127.0.0.1:1")
    assert r.returncode == 75 and len(r.stderr.splitlines()) == 1 and "warning" in r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    r = pt("export", run, "--db", db, "--format", "openlineage", "--push", cwd=str(work), env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "OPENLINEAGE_URL" in r.stderr
    r = pt("export", run, "--db", db, "--format", "openlineage", "--url", "marquez:5000")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "http" in r.stderr
    # the spooled events reach the endpoint configured the OpenLineage way, by OPENLINEAGE_URL
    ep = Endpoint()
    try:
        r = pt("export", run, "--db", db, "--format", "openlineage", "--push", env={**env, "OPENLINEAGE_URL": ep.url})
        assert r.returncode == 0 and "(2 from the spool)" in r.stderr, r.stderr
        assert ep.keys() == _exported(db, run)
    finally:
        ep.down()
    assert not ep.errors, ep.errors


def test_the_daemon_emits_spools_and_catches_up(endpoint):
    env = {**os.environ, **FAST_RETRY}
    with running_daemon(env=env, args=("--openlineage-url", endpoint.url, "--openlineage-every", "0.5")) as d:
        work = d["base"]
        sock = ("--socket", d["socket"])
        def labelled(label: str) -> str:  # the store also holds the sessions of kernels others run here
            runs = json.loads(pt("runs", *sock, "--json", check=True).stdout)
            (found,) = [r["id"] for r in runs if r["label"] == label]
            return found
        pt("run", *sock, "--label", "ol-first", "--", "sh", "-c", "echo 1 > a.txt", cwd=work, check=True)
        first = labelled("ol-first")
        wait_for(lambda: set(_exported(d["db"], first)) <= set(endpoint.keys()), 120, "the first run's events")

        endpoint.down()
        pt("run", *sock, "--label", "ol-second", "--", "sh", "-c", "cat a.txt > b.txt", cwd=work, check=True)
        spool = d["db"] + ".openlineage-spool"
        wait_for(lambda: os.path.exists(spool), 120, "the daemon to spool what the endpoint did not take")
        second = labelled("ol-second")

        endpoint.up()
        wait_for(lambda: set(_exported(d["db"], second)) <= set(endpoint.keys()), 120, "the spooled events")
        wait_for(lambda: not os.path.exists(spool), 60, "the spool to empty")
        expected = _exported(d["db"], first) + _exported(d["db"], second)
        got = endpoint.keys()
        assert all(got.count(k) == 1 for k in expected), got  # each sent once: sent ones are not spooled
        sent_log = [json.loads(line) for line in open(d["db"] + ".openlineage-sent")]
        assert {(k["runId"], k["eventType"]) for k in sent_log} >= set(expected)

        # a user's push through the daemon's socket; its spool is in the user's state folder
        state = os.path.join(work, "state")
        endpoint.down()
        r = pt("export", second, *sock, "--format", "openlineage", "--url", endpoint.url,
               env={**env, "XDG_STATE_HOME": state})
        assert r.returncode == 75 and len(r.stderr.splitlines()) == 1, r.stderr
        assert os.path.exists(os.path.join(state, "provtrace", "openlineage.openlineage-spool"))
        endpoint.up()
        before = len(endpoint.keys())
        r = pt("export", second, *sock, "--format", "openlineage", "--url", endpoint.url,
               env={**env, "XDG_STATE_HOME": state})
        assert r.returncode == 0 and "(2 from the spool)" in r.stderr, r.stderr
        mine = set(_exported(d["db"], second))  # the daemon may send foreign kernels' sessions meanwhile
        assert [k for k in endpoint.keys()[before:] if k in mine] == _exported(d["db"], second)


def test_the_daemon_refuses_to_start_without_an_openlineage_endpoint(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    r = pt("daemon", "--socket", str(tmp_path / "s.sock"), "--db", str(tmp_path / "s.db"), "--openlineage",
           cwd=str(tmp_path), env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "OPENLINEAGE_URL" in r.stderr, r.stderr


def test_push_through_the_transport_openlineage_yml_configures(capture, work):
    """--push with openlineage.yml in the working folder: its file transport, as openlineage-python reads it."""
    db = str(work.parent / "store.db")
    run = _run(capture, work, db, "echo hi > out.txt")
    log = work.parent / "events.jsonl"
    (work / "openlineage.yml").write_text(f"transport:\n  type: file\n  log_file_path: {log}\n  append: true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    r = pt("export", run, "--db", db, "--format", "openlineage", "--push", cwd=str(work), env=env)
    assert r.returncode == 0 and "the configured file transport" in r.stderr, r.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    for ev in events:
        check_event(ev)
    assert [(e["run"]["runId"], e["eventType"]) for e in events] == _exported(db, run)
