-- Ingest: the central side re-verifies each host's chain as it takes records.
--
-- A shipper COPYs a batch into two temporary tables of its session,
--   pg_temp.incoming(seq, rid, kind, p1, p2, body, hash)
--   pg_temp.incoming_paths(path, fkey, shared)
-- then calls provtrace_ingest(host_id, backlog) in the same transaction.
-- The function locks the host's row (one ingest per host at a time); of the
-- batch's records:
--   * at or below the held head: a re-send. The same hash is a duplicate and
--     is dropped (at least once + idempotent); a different one is recorded as
--     'conflict' (the host's history was rewritten) and the held row stays;
--   * above head + 1: the missing range is recorded as a 'gap', and the
--     record starts a new verified stretch (its link cannot be checked);
--   * otherwise its hash must be sha256 of the head's hash and its own
--     fields, exactly as tracer/store/sqlite.py chain_hash computes it; a
--     mismatch is recorded as 'broken'. The record is kept either way: a
--     loss is shown, never papered over by dropping data.
-- Then the derived tables (runs, processes, accesses, renames) get the
-- new records' facts.

ALTER TABLE hosts ADD COLUMN ship_role text;  -- when set, only this role may ship for the host

CREATE FUNCTION provtrace_chain_hash(prev bytea, rid bigint, kind int, p1 bytea, p2 bytea, body text)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
  SELECT sha256(prev || convert_to(rid::text || '|' || kind::text || '|', 'UTF8')
                || coalesce(p1, ''::bytea) || '\x00'::bytea || coalesce(p2, ''::bytea) || '\x00'::bytea
                || convert_to(body, 'UTF8'))
$$;

CREATE FUNCTION provtrace_ingest(h text, backlog bigint DEFAULT NULL,
                                 OUT accepted int, OUT duplicates int, OUT losses int, OUT head_seq bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  hs bigint; hh bytea; old_hs bigint; owner text; n int; resent int;
BEGIN
  INSERT INTO hosts(host_id) VALUES (h) ON CONFLICT DO NOTHING;
  SELECT x.head_seq, x.head_hash, x.ship_role INTO hs, hh, owner FROM hosts x WHERE x.host_id = h FOR UPDATE;
  IF owner IS NOT NULL AND owner <> session_user THEN
    RAISE EXCEPTION 'role % may not ship for host % (it belongs to %)', session_user, h, owner;
  END IF;
  old_hs := hs;
  INSERT INTO paths(host_id, path, fkey, shared)
    SELECT h, i.path, i.fkey, i.shared FROM pg_temp.incoming_paths i ON CONFLICT DO NOTHING;

  -- re-sent records: the same hash is a duplicate, another one a conflict
  SELECT count(*) INTO resent FROM pg_temp.incoming i WHERE i.seq <= hs;
  INSERT INTO losses(host_id, seq_from, seq_to, reason, detail)
    SELECT h, i.seq, i.seq, 'conflict', 're-sent with another hash than the record held'
      FROM pg_temp.incoming i JOIN records x ON x.host_id = h AND x.seq = i.seq
     WHERE i.seq <= hs AND x.hash <> i.hash;
  GET DIAGNOSTICS n = ROW_COUNT;
  losses := n;
  duplicates := resent - n;

  -- new records: each must link to the one before it (the held head for the
  -- first). Every link checked is the whole chain checked, so this is done
  -- set-wise: lag() gives each record its predecessor.
  CREATE TEMP TABLE IF NOT EXISTS linked(seq bigint, rid bigint, kind int, p1 bytea, p2 bytea, body text,
                                         hash bytea, pseq bigint, phash bytea) ON COMMIT DELETE ROWS;
  TRUNCATE pg_temp.linked;
  INSERT INTO pg_temp.linked
    SELECT n.*, coalesce(lag(n.seq) OVER w, hs), coalesce(lag(n.hash) OVER w, hh)
      FROM (SELECT DISTINCT ON (i.seq) i.seq, i.rid, i.kind, i.p1, i.p2, i.body, i.hash
              FROM pg_temp.incoming i WHERE i.seq > hs ORDER BY i.seq) n
    WINDOW w AS (ORDER BY n.seq);
  INSERT INTO losses(host_id, seq_from, seq_to, reason, detail)
    SELECT h, l.pseq + 1, l.seq - 1, 'gap', 'records never received'
      FROM pg_temp.linked l WHERE l.seq > l.pseq + 1
    UNION ALL
    SELECT h, l.seq, l.seq, 'broken', 'hash does not follow from the record before it'
      FROM pg_temp.linked l
     WHERE l.seq = l.pseq + 1 AND provtrace_chain_hash(l.phash, l.rid, l.kind, l.p1, l.p2, l.body) <> l.hash
     ORDER BY 2;
  GET DIAGNOSTICS n = ROW_COUNT;
  losses := losses + n;
  INSERT INTO records(host_id, seq, rid, kind, p1, p2, body, hash)
    SELECT h, l.seq, l.rid, l.kind, l.p1, l.p2, l.body, l.hash FROM pg_temp.linked l;
  GET DIAGNOSTICS accepted = ROW_COUNT;
  SELECT l.seq, l.hash INTO hs, hh FROM pg_temp.linked l ORDER BY l.seq DESC LIMIT 1;
  IF NOT FOUND THEN
    hs := old_hs;
    SELECT x.head_hash INTO hh FROM hosts x WHERE x.host_id = h;
  END IF;
  UPDATE hosts x SET head_seq = hs, head_hash = hh, last_ingest = now(),
         backlog = coalesce(provtrace_ingest.backlog, x.backlog)
   WHERE x.host_id = h;
  head_seq := hs;
  IF hs > old_hs THEN
    PERFORM provtrace_derive(h);
  END IF;
END
$$;

-- A record body as jsonb. Bodies are ASCII JSON from Python, where a name
-- that is not UTF-8 carries lone surrogates (\udcXX) that jsonb refuses:
-- those bodies (rare: only they hold '\u' at all, most bodies none) are read
-- with the escapes spelled out as text.
CREATE FUNCTION provtrace_jsonb_escaped(body text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN body::jsonb;
EXCEPTION WHEN others THEN
  RETURN replace(body, '\u', '\\u')::jsonb;
END
$$;

CREATE FUNCTION provtrace_jsonb(body text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN strpos(body, '\u') = 0 THEN body::jsonb ELSE provtrace_jsonb_escaped(body) END
$$;

-- Facts of h's new records (pg_temp.linked, their paths in
-- pg_temp.incoming_paths) into the derived tables. Record kinds and bodies
-- as in tracer/store/sqlite.py and tracer/store/writer.py.
CREATE FUNCTION provtrace_derive(h text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
  -- the temporary tables have no statistics until analysed: without them the
  -- planner takes a few thousand rows for one and picks nested loops
  ANALYZE pg_temp.linked;
  ANALYZE pg_temp.incoming_paths;
  INSERT INTO runs(host_id, rid, id, kind, label, backend, uid, "user", hostname, boot, start_us, started)
    SELECT h, x.rid, b->>'id', b->>'kind', b->>'label', b->>'backend', (b->>'uid')::int, b->>'user',
           b->>'host', b->'writer'->>'boot', coalesce((b->>'start_us')::bigint, 0), b->>'started'
      FROM pg_temp.linked x, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.kind = 1
    ON CONFLICT DO NOTHING;
  UPDATE runs u SET ended = b->>'ended', exit_code = (b->>'exit_code')::int,
         lost_events = (b->>'lost_events')::bigint, complete = coalesce((b->>'complete')::boolean, false)
    FROM pg_temp.linked x, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
   WHERE x.kind = 9 AND u.host_id = h AND u.rid = x.rid;
  INSERT INTO processes(host_id, rid, seq, boot, pid, ppid, started_us, ended_us, exe, argv, uid, exit_code, cell)
    SELECT h, x.rid, x.seq, u.boot, (b->>'pid')::int, (b->>'ppid')::int, (b->>'started_us')::bigint,
           (b->>'ended_us')::bigint, b->>'exe', b->'argv', (b->>'uid')::int, (b->>'exit_code')::int, b->>'cell'
      FROM pg_temp.linked x JOIN runs u ON u.host_id = h AND u.rid = x.rid, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.kind = 2
    ON CONFLICT DO NOTHING;
  INSERT INTO accesses(host_id, seq, rid, pid, fkey, bits, first_us, last_us, cell, fkind)
    SELECT h, x.seq, x.rid, (b->>0)::int, p.fkey, (b->>1)::int, u.start_us + (b->>4)::bigint,
           u.start_us + (b->>5)::bigint, b->>6, b->>7
      FROM pg_temp.linked x JOIN runs u ON u.host_id = h AND u.rid = x.rid
      JOIN pg_temp.incoming_paths p ON p.path = x.p1, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.kind = 3
    ON CONFLICT DO NOTHING;
  INSERT INTO renames(host_id, seq, rid, pid, from_key, to_key, t_us)
    SELECT h, x.seq, x.rid, (b->>0)::int, pf.fkey, pt.fkey, u.start_us + (b->>1)::bigint
      FROM pg_temp.linked x JOIN runs u ON u.host_id = h AND u.rid = x.rid
      JOIN pg_temp.incoming_paths pt ON pt.path = x.p1
      JOIN pg_temp.incoming_paths pf ON pf.path = x.p2, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.kind = 4
    ON CONFLICT DO NOTHING;
END
$$;
