-- Versions over the fleet (tracer/fleet/stale.py, the version-aware lineage
-- walk in tracer/fleet/query.py): fingerprints are found by path, and a
-- file key's writes in time order.

-- FINGERPRINT records (kind 11: a data file's content identity when a run
-- or cell ended) by host and path, for `stale`.
CREATE INDEX records_fingerprints ON records(host_id, p1) WHERE kind = 11;

-- The version a read saw is the last write to its file key that closed
-- before the read began; the one that replaced it, the first after.
CREATE INDEX accesses_fkey_writes ON accesses(fkey, last_us) WHERE bits & 14 <> 0;
