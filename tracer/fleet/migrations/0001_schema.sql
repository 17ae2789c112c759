-- provtrace central fleet store, version 1: every host's chained records, as
-- shipped, and the tables derived from them that queries walk.
-- Applied once by `provtrace fleet migrate URL` (tracer/fleet/migrate.py).

-- One row per host: the verified head of its chain as received here.
CREATE TABLE hosts(
  host_id     text PRIMARY KEY,
  head_seq    bigint NOT NULL DEFAULT 0,
  head_hash   bytea  NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000',
  first_seen  timestamptz NOT NULL DEFAULT now(),
  last_ingest timestamptz,
  backlog     bigint           -- what the shipper last said it still had to send
);

-- The host's records, byte for byte (paths as raw bytes), keyed by (host, seq).
CREATE TABLE records(
  host_id text   NOT NULL REFERENCES hosts,
  seq     bigint NOT NULL,
  rid     bigint NOT NULL,
  kind    int    NOT NULL,
  p1      bytea,
  p2      bytea,
  body    text   NOT NULL,
  hash    bytea  NOT NULL,
  PRIMARY KEY (host_id, seq)
);

-- Loss seen on ingest: a gap in a host's sequence, a record whose hash does not
-- follow from the one before, or a re-sent record that differs from the one held.
CREATE TABLE losses(
  host_id  text   NOT NULL REFERENCES hosts,
  seq_from bigint NOT NULL,
  seq_to   bigint NOT NULL,
  reason   text   NOT NULL CHECK (reason IN ('gap', 'broken', 'conflict')),
  detail   text,
  noted    timestamptz NOT NULL DEFAULT now()
);

-- What a host's path is across the fleet: a local path is host-scoped
-- (host:<id>:<path>); one on a shared filesystem is keyed by that
-- filesystem's identity (nfs://server:/export/inner, shared:/prefix/inner).
CREATE TABLE paths(
  host_id text  NOT NULL REFERENCES hosts,
  path    bytea NOT NULL,
  fkey    text  NOT NULL,
  shared  boolean NOT NULL,
  PRIMARY KEY (host_id, path)
);
CREATE INDEX paths_fkey ON paths(fkey);

CREATE TABLE runs(
  host_id   text   NOT NULL REFERENCES hosts,
  rid       bigint NOT NULL,
  id        text   NOT NULL,
  kind      text,
  label     text,
  backend   text,
  uid       int,
  "user"    text,
  hostname  text,
  boot      text,
  start_us  bigint,
  started   text,
  ended     text,
  exit_code int,
  lost_events bigint,
  complete  boolean,
  PRIMARY KEY (host_id, rid)
);
CREATE INDEX runs_id ON runs(id);

-- The tables below are derived from verified records at ingest (one
-- transaction with them), so they carry no foreign keys: per-row checks
-- would halve the ingest rate for nothing.

-- Process identity: (host, boot, pid, start time).
CREATE TABLE processes(
  host_id    text   NOT NULL,
  rid        bigint NOT NULL,
  seq        bigint NOT NULL,
  boot       text,
  pid        int    NOT NULL,
  ppid       int,
  started_us bigint,
  ended_us   bigint,
  exe        text,
  argv       jsonb,
  uid        int,
  exit_code  int,
  cell       text,
  PRIMARY KEY (host_id, seq)
);
CREATE INDEX processes_run_pid ON processes(host_id, rid, pid);

-- One row per (process, file) of a FILE record; times absolute (UTC us).
CREATE TABLE accesses(
  host_id  text   NOT NULL,
  seq      bigint NOT NULL,
  rid      bigint NOT NULL,
  pid      int    NOT NULL,
  fkey     text   NOT NULL,
  bits     int    NOT NULL,  -- read 1, write 2, create 4, truncate 8, delete 16, exec 32, map 64
  first_us bigint,
  last_us  bigint,
  cell     text,
  fkind    text,             -- d data, l library, s system, t temp (as classified on the host)
  PRIMARY KEY (host_id, seq)
);
CREATE INDEX accesses_fkey ON accesses(fkey);
CREATE INDEX accesses_proc ON accesses(host_id, rid, pid);

CREATE TABLE renames(
  host_id  text   NOT NULL,
  seq      bigint NOT NULL,
  rid      bigint NOT NULL,
  pid      int,
  from_key text   NOT NULL,
  to_key   text   NOT NULL,
  t_us     bigint,
  PRIMARY KEY (host_id, seq)
);
CREATE INDEX renames_to ON renames(to_key);
CREATE INDEX renames_from ON renames(from_key);

-- Lineage walks accesses and renames directly (tracer/fleet/query.py): from
-- a file to the processes that wrote it (accesses_fkey), from a process to
-- the files it read before that write (accesses_proc), and back through
-- renames. Read-write pairs are never stored: a process that reads and
-- writes thousands of files would make millions of them.
