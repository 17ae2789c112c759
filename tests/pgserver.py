"""A real PostgreSQL server for the fleet tests: Debian's postgresql-15,
initdb + pg_ctl on a temporary directory and a free port.

initdb refuses to run as root, so as root the cluster belongs to the
`postgres` system user (the Debian package makes it). Trust authentication
on 127.0.0.1 only: a role connects by naming itself (the tests make analyst
roles and check what row-level security shows each).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile

BIN = "/usr/lib/postgresql/15/bin"


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if not os.path.exists(os.path.join(BIN, "initdb")):
        return f"no {BIN}/initdb (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres system user to own the cluster"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="provtrace-pg-", dir="/tmp")
        self.data = os.path.join(self.base, "data")
        self.port = _free_port()
        self._as = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        # cwd /: the postgres user may not enter the caller's folder
        return subprocess.run([*self._as, *argv], capture_output=True, text=True, check=check, timeout=120,
                              cwd="/")

    def init(self) -> None:
        r = self._run(f"{BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr or r.stdout}")

    def start(self) -> None:
        r = self._run(f"{BIN}/pg_ctl", "-D", self.data, "-w", "-t", "120", "-l",
                      os.path.join(self.base, "log"), "-o",
                      f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off",
                      "start", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr or r.stdout}; log: {self.log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run(f"{BIN}/pg_ctl", "-D", self.data, "-w", "-m", mode, "stop", check=False)

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def url(self, db: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        r = self._run(f"{BIN}/psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(self.port), "-U", user,
                      "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql)
        return r.stdout.strip()

    def create_db(self, name: str) -> str:
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
