"""No secret given to a traced run reaches any file provtrace writes (issue 12, redaction gaps).

A real traced command with secrets in its environment, its argv (inside a
`sh -c` string too) and its label; then the raw bytes of the store, its WAL,
the --json-out document and every export format are searched for them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import pt

pytestmark = pytest.mark.privileged

SECRET = "s3cr3t-Value-9f8e7d"
FORMATS = ("json", "prov-json", "prov-n", "prov-xml", "openlineage", "graphml", "dot")


def test_secrets_reach_no_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    db, doc = tmp_path / "s.db", tmp_path / "run.json"
    env = dict(os.environ, DB_PW=SECRET, SESSION=SECRET, CREDS=f"me:{SECRET}",
               NOTIFY=f"https://hooks.slack.com/services/T0/B0/{SECRET}")
    script = f"echo hi > {tmp_path}/out.txt; true --password={SECRET} curl -u bob:{SECRET}"
    r = pt("run", "--db", str(db), "--json-out", str(doc), "--label", f"nightly token={SECRET}",
           "--", "sh", "-c", script, "x", f"--pw={SECRET}", "-P", SECRET, f"password:{SECRET}", env=env)
    assert r.returncode == 0, r.stderr
    written = [doc]
    for fmt in FORMATS:
        out = tmp_path / f"export.{fmt}"
        e = pt("export", "last", "--db", str(db), "--format", fmt, "-o", str(out))
        assert e.returncode == 0, e.stderr
        written.append(out)
    written += [p for p in tmp_path.iterdir() if p.name.startswith("s.db")]  # the store, -wal, -shm
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), f"{path.name} holds the secret"
    assert "nightly token=<redacted>" in doc.read_text()
