"""`provtrace fleet migrate URL`: create or upgrade the central schema.

Migrations are the SQL files in migrations/, named NNNN_what.sql and applied
in order, each in its own transaction together with its row in
schema_version. Applying is idempotent: what schema_version lists is skipped.
Concurrent migrates wait on one advisory lock.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from .db import connect

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x70726F76  # pg_advisory_lock key of provtrace migrations ("prov")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    out = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out)



def latest() -> int:
    return migrations()[-1][0]


def applied(conn) -> list[int]:
    row = conn.execute("SELECT to_regclass('schema_version')").fetchone()
    if row[0] is None:
        return []
    return [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def migrate(url: str) -> list[str]:
    """Apply what is missing at url; returns the names applied now."""
    done_now = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version("
                         "version int PRIMARY KEY, name text NOT NULL, "
                         "applied timestamptz NOT NULL DEFAULT now())")
            have = set(applied(conn))
            for version, name, sql in migrations():
                if version in have:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_version(version, name) VALUES (%s, %s)", (version, name))
                log.info("event=migrated version=%d name=%s", version, name)
                done_now.append(f"{version:04d}_{name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done_now
