"""Fingerprints: the content identity of a data file when a run (or cell) ended.

A FINGERPRINT record (p1 = path) holds a dict body:

    {"cell", "at_us", "type": "file"|"dir"|"symlink"|"other", "size_bytes", "mtime_ns",
     "mtime", "inode", "dev", "sha256", "hash_skipped"?, "error"?,
     "schema"?, "schema_skipped"?, "changed_before_hash"?}

(changed_before_hash: the file changed between the run's end and its hashing;
store/finisher.py records the stat it had then, and no hash.)

sha256 is taken for regular files up to HASH_CAP_BYTES; above it, or when the
file cannot be read, sha256 is null and `hash_skipped` says why. A file that
cannot even be stat'ed (vanished, permission denied) keeps only `error`.
A symlink (as the path's last component) is never followed: it keeps only
its type. The daemon fingerprints with the run owner's credentials
(privs.acting_as), so nothing the owner could not read is ever recorded.
`provtrace stale` compares these against the files as they are now, and
load_run merges them into the run document's `files` entries.

A tabular data file (store/schema.py: CSV/TSV, Parquet, Arrow, JSON lines,
by name) also gets its `schema`, read from the same open file as its hash
and checked by the same before/after stat, so it describes those very
bytes. SchemaPolicy bounds what that costs, or turns it off.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable

from ..clock import us_to_iso
from ..model.paths import DATA, TEMP, classify, display
from ..privs import Creds, PrivilegeError, acting_as
from . import sqlite as S
from .schema import OFF, SchemaPolicy, format_of, read_schema

log = logging.getLogger(__name__)

# Hashing costs a full read; above this a file is identified by size, mtime
# and inode only, so the end of a run never waits minutes on one huge file.
HASH_CAP_BYTES = 256 * 1024 * 1024
FINGERPRINTED_KINDS = (DATA, TEMP)
_CHUNK_BYTES = 1 << 20

# (reader uid, dev, inode, size, mtime_ns) -> sha256 hex, and ("schema", *that key)
# -> the schema: hard links and repeated paths are read once per reader
HashCache = dict[tuple, object]


def _reason(err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "vanished"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return os.strerror(err.errno) if err.errno else str(err)


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


def _hash_open_file(path: str, st: os.stat_result, schema_format: str | None = None,
                    schema_max_bytes: int = 0) -> tuple[str | None, str | None, dict | None]:
    """(sha256, None, schema) or (None, why, None). Opens (never through a
    symlink), checks it is still the same file, hashes (and, given a
    schema_format, reads its schema), and checks again that it did not
    change underneath the reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        return None, f"unreadable: {_reason(e)}", None
    schema = None
    try:
        before = os.fstat(fd)
        if (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino):
            return None, "replaced while hashing", None
        h = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK_BYTES):
            h.update(chunk)
        if schema_format is not None:
            schema = read_schema(fd, schema_format, st.st_size, schema_max_bytes)
        after = os.fstat(fd)
    except OSError as e:
        return None, f"unreadable: {_reason(e)}", None
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return None, "changed while hashing", None
    return h.hexdigest(), None, schema


def fingerprint(path: str, cache: HashCache | None = None, *,
                cap_bytes: int = HASH_CAP_BYTES, creds: Creds | None = None,
                schema: SchemaPolicy = OFF) -> dict:
    """The fingerprint of path as it is now (no cell, no time). Never raises
    for file-system reasons: a failure is recorded in `error` or `hash_skipped`.

    With creds (the run's owner), the file is stat'ed and read with that
    user's file-system credentials, so a fingerprint never holds what the
    owner could not have read. Either way a symlink as the last component is
    never followed: it is recorded as type "symlink", with nothing of its target.
    schema: whether (and within what bounds) a tabular file's schema is read too."""
    if creds is None:
        return _fingerprint(path, cache, cap_bytes, -1, schema)
    try:
        with acting_as(creds):
            return _fingerprint(path, cache, cap_bytes, creds.uid, schema)
    except PrivilegeError as e:
        return {"error": f"not read as its owner: {e}"}


def _fingerprint(path: str, cache: HashCache | None, cap_bytes: int, uid: int,
                 schema: SchemaPolicy = OFF) -> dict:
    try:
        st = os.lstat(path)
    except OSError as e:
        return {"error": _reason(e)}
    if stat.S_ISLNK(st.st_mode):
        return {"type": "symlink", "sha256": None, "hash_skipped": "a symlink (not followed)"}
    fp: dict = {"type": _kind_of(st.st_mode), "size_bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns, "mtime": us_to_iso(st.st_mtime_ns // 1000),
                "inode": st.st_ino, "dev": st.st_dev, "sha256": None}
    if fp["type"] != "file":
        fp["hash_skipped"] = "not a regular file"
        return fp
    if st.st_size > cap_bytes:
        fp["hash_skipped"] = "too large"
        return fp
    fmt = format_of(path) if schema.enabled else None
    key = (uid, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)  # a hash read as one user is theirs
    skey = ("schema", *key)
    if cache is not None and key in cache and (fmt is None or skey in cache):
        fp["sha256"] = cache[key]
        if fmt is not None:
            fp["schema"] = cache[skey]
        return fp
    digest, why, table = _hash_open_file(path, st, fmt, schema.max_bytes)
    fp["sha256"] = digest
    if why:
        fp["hash_skipped"] = why
    elif cache is not None:
        cache[key] = digest
        if fmt is not None:
            cache[skey] = table
    if table is not None:
        fp["schema"] = table
    return fp


def record_fingerprints(store: S.Store, rid: int, paths: Iterable[str], cell: str | None = None,
                        *, kinds: tuple[str, ...] | None = FINGERPRINTED_KINDS,
                        cap_bytes: int = HASH_CAP_BYTES, creds: Creds | None = None,
                        schema: SchemaPolicy | None = None, at_us: int | None = None,
                        check: Callable[[str, dict], dict] | None = None) -> int:
    """Queue one FINGERPRINT record per path of a fingerprinted kind; returns how many.

    Called by the runner before end_run, and by a notebook session recorder at
    each cell end (with that cell's id). kinds=None fingerprints every path.
    creds: the run owner's, when this process is not the owner (the daemon).
    schema: the schema policy (None: the config file's [schema] table). Once
    its time budget is spent, the remaining files are fingerprinted without
    a schema and say so (`schema_skipped`).
    """
    if schema is None:
        schema = schema_policy()
    cache: HashCache = {}
    n = 0
    t0 = time.monotonic()
    for path in sorted(set(paths)):
        if kinds is not None and classify(path) not in kinds:
            continue
        within = time.monotonic() - t0 < schema.budget_s
        fp = fingerprint(path, cache, cap_bytes=cap_bytes, creds=creds, schema=schema if within else OFF)
        if schema.enabled and not within and format_of(path) and fp.get("sha256"):
            fp["schema_skipped"] = "time budget spent"
        if check is not None:
            fp = check(path, fp)
        when = at_us if at_us is not None else time.time_ns() // 1000
        store.append(rid, S.FINGERPRINT, {"cell": cell, "at_us": when, **fp},
                     p1=path)
        if "error" in fp:
            log.debug("fingerprint path=%s error=%s", display(path), fp["error"])
        n += 1
    log.debug("fingerprints rid=%s cell=%s count=%d seconds=%.3f", rid, cell, n,
              time.monotonic() - t0)
    return n


def schema_policy() -> SchemaPolicy:
    """The config file's [schema] table (a bad file: the defaults, with a warning)."""
    from .. import config  # noqa: PLC0415

    return config.load_lenient(log.warning).schema
