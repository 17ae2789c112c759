-- Who may read what, centrally: the same rule as the daemon's (a user sees
-- the runs of their own uid; root, here the schema's owner and superusers,
-- sees everything), enforced by row-level security.
--
-- Roles (NOLOGIN groups; a site grants them to login roles, docs/fleet.md):
--   provtrace_reader   analysts: SELECT, filtered to their own runs;
--   provtrace_shipper  hosts: may only call provtrace_ingest (no reads).
-- A run belongs to the database role user_map names for its (host, uid),
-- where '*' as host_id maps the uid on every host; without a map row, to the
-- role named as the run's local user name (sites whose hosts share one user
-- directory, as a JupyterHub fleet does, need no map at all).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'provtrace_reader') THEN
    CREATE ROLE provtrace_reader NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'provtrace_shipper') THEN
    CREATE ROLE provtrace_shipper NOLOGIN;
  END IF;
END
$$;

CREATE TABLE user_map(
  host_id text NOT NULL,      -- a host id, or '*' for every host
  uid     int  NOT NULL,
  role    name NOT NULL,
  PRIMARY KEY (host_id, uid)
);

-- The role a run belongs to (SECURITY DEFINER: user_map is not readable by analysts).
CREATE FUNCTION provtrace_run_role(h text, u int, username text) RETURNS name
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT coalesce((SELECT m.role FROM user_map m WHERE m.host_id = h AND m.uid = u),
                  (SELECT m.role FROM user_map m WHERE m.host_id = '*' AND m.uid = u),
                  username::name)
$$;

ALTER TABLE runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY runs_own ON runs FOR SELECT TO provtrace_reader
  USING (provtrace_run_role(host_id, uid, "user") = current_user);

-- Everything that belongs to a run is visible with its run (the subquery
-- reads runs under runs' own policy).
ALTER TABLE processes ENABLE ROW LEVEL SECURITY;
CREATE POLICY processes_own ON processes FOR SELECT TO provtrace_reader
  USING (EXISTS (SELECT 1 FROM runs u WHERE u.host_id = processes.host_id AND u.rid = processes.rid));
ALTER TABLE accesses ENABLE ROW LEVEL SECURITY;
CREATE POLICY accesses_own ON accesses FOR SELECT TO provtrace_reader
  USING (EXISTS (SELECT 1 FROM runs u WHERE u.host_id = accesses.host_id AND u.rid = accesses.rid));
ALTER TABLE renames ENABLE ROW LEVEL SECURITY;
CREATE POLICY renames_own ON renames FOR SELECT TO provtrace_reader
  USING (EXISTS (SELECT 1 FROM runs u WHERE u.host_id = renames.host_id AND u.rid = renames.rid));
ALTER TABLE records ENABLE ROW LEVEL SECURITY;
CREATE POLICY records_own ON records FOR SELECT TO provtrace_reader
  USING (EXISTS (SELECT 1 FROM runs u WHERE u.host_id = records.host_id AND u.rid = records.rid));
-- A path is visible where a visible access or rename names it.
ALTER TABLE paths ENABLE ROW LEVEL SECURITY;
CREATE POLICY paths_own ON paths FOR SELECT TO provtrace_reader
  USING (EXISTS (SELECT 1 FROM accesses a WHERE a.fkey = paths.fkey AND a.host_id = paths.host_id)
         OR EXISTS (SELECT 1 FROM renames n WHERE n.host_id = paths.host_id
                                             AND paths.fkey IN (n.from_key, n.to_key)));


GRANT USAGE ON SCHEMA public TO provtrace_reader, provtrace_shipper;
GRANT SELECT ON hosts, losses, runs, processes, accesses, renames, records, paths, schema_version
  TO provtrace_reader;
GRANT SELECT ON hosts TO provtrace_shipper;  -- its high-water mark, to resume from
REVOKE ALL ON FUNCTION provtrace_ingest(text, bigint), provtrace_derive(text),
       provtrace_run_role(text, int, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION provtrace_ingest(text, bigint) TO provtrace_shipper;
GRANT EXECUTE ON FUNCTION provtrace_run_role(text, int, text) TO provtrace_reader;
