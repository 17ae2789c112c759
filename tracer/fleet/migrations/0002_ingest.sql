-- Ingest: the central side re-verifies each host's chain as it takes records.
--
-- A shipper COPYs a batch into two temporary tables of its session,
--   pg_temp.incoming(seq, rid, kind, p1, p2, body, hash)
--   pg_temp.incoming_paths(path, fkey, shared)
-- then calls provtrace_ingest(host_id, backlog) in the same transaction.
-- The function locks the host's row (one ingest per host at a time), and for
-- each record in sequence order:
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
  hs bigint; hh bytea; old_hs bigint; owner text; held bytea; expect bytea;
  r record;
BEGIN
  accepted := 0; duplicates := 0; losses := 0;
  INSERT INTO hosts(host_id) VALUES (h) ON CONFLICT DO NOTHING;
  SELECT x.head_seq, x.head_hash, x.ship_role INTO hs, hh, owner FROM hosts x WHERE x.host_id = h FOR UPDATE;
  IF owner IS NOT NULL AND owner <> session_user THEN
    RAISE EXCEPTION 'role % may not ship for host % (it belongs to %)', session_user, h, owner;
  END IF;
  old_hs := hs;
  INSERT INTO paths(host_id, path, fkey, shared)
    SELECT h, i.path, i.fkey, i.shared FROM pg_temp.incoming_paths i ON CONFLICT DO NOTHING;
  FOR r IN SELECT * FROM pg_temp.incoming ORDER BY seq LOOP
    IF r.seq <= hs THEN
      SELECT x.hash INTO held FROM records x WHERE x.host_id = h AND x.seq = r.seq;
      IF held IS NULL OR held = r.hash THEN
        duplicates := duplicates + 1;  -- held already (or inside a gap recorded before)
      ELSE
        INSERT INTO losses(host_id, seq_from, seq_to, reason, detail)
          VALUES (h, r.seq, r.seq, 'conflict', 're-sent with another hash than the record held');
        losses := losses + 1;
      END IF;
      CONTINUE;
    END IF;
    IF r.seq > hs + 1 THEN
      INSERT INTO losses(host_id, seq_from, seq_to, reason, detail)
        VALUES (h, hs + 1, r.seq - 1, 'gap', 'records never received');
      losses := losses + 1;
    ELSE
      expect := provtrace_chain_hash(hh, r.rid, r.kind, r.p1, r.p2, r.body);
      IF expect <> r.hash THEN
        INSERT INTO losses(host_id, seq_from, seq_to, reason, detail)
          VALUES (h, r.seq, r.seq, 'broken', 'hash does not follow from the record before it');
        losses := losses + 1;
      END IF;
    END IF;
    INSERT INTO records(host_id, seq, rid, kind, p1, p2, body, hash)
      VALUES (h, r.seq, r.rid, r.kind, r.p1, r.p2, r.body, r.hash);
    hs := r.seq; hh := r.hash; accepted := accepted + 1;
  END LOOP;
  UPDATE hosts x SET head_seq = hs, head_hash = hh, last_ingest = now(),
         backlog = coalesce(provtrace_ingest.backlog, x.backlog)
   WHERE x.host_id = h;
  head_seq := hs;
  IF hs > old_hs THEN
    PERFORM provtrace_derive(h, old_hs, hs);
  END IF;
END
$$;

-- A record body as jsonb. Bodies are ASCII JSON from Python, where a name
-- that is not UTF-8 carries lone surrogates (\udcXX) that jsonb refuses:
-- those bodies (rare) are read with the escapes spelled out as text.
CREATE FUNCTION provtrace_jsonb(body text) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF body !~ '\\u(d[89a-f]|0000)' THEN
    RETURN body::jsonb;
  END IF;
  BEGIN
    RETURN body::jsonb;
  EXCEPTION WHEN others THEN
    RETURN replace(body, '\u', '\\u')::jsonb;
  END;
END
$$;

-- Facts of h's records in (lo, hi] into the derived tables. Record kinds and
-- bodies as in tracer/store/sqlite.py and tracer/store/writer.py.
CREATE FUNCTION provtrace_derive(h text, lo bigint, hi bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  INSERT INTO runs(host_id, rid, id, kind, label, backend, uid, "user", hostname, boot, start_us, started)
    SELECT h, x.rid, b->>'id', b->>'kind', b->>'label', b->>'backend', (b->>'uid')::int, b->>'user',
           b->>'host', b->'writer'->>'boot', coalesce((b->>'start_us')::bigint, 0), b->>'started'
      FROM records x, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.host_id = h AND x.seq > lo AND x.seq <= hi AND x.kind = 1
    ON CONFLICT DO NOTHING;
  UPDATE runs u SET ended = b->>'ended', exit_code = (b->>'exit_code')::int,
         lost_events = (b->>'lost_events')::bigint, complete = coalesce((b->>'complete')::boolean, false)
    FROM records x, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
   WHERE x.host_id = h AND x.seq > lo AND x.seq <= hi AND x.kind = 9 AND u.host_id = h AND u.rid = x.rid;
  INSERT INTO processes(host_id, rid, seq, boot, pid, ppid, started_us, ended_us, exe, argv, uid, exit_code, cell)
    SELECT h, x.rid, x.seq, u.boot, (b->>'pid')::int, (b->>'ppid')::int, (b->>'started_us')::bigint,
           (b->>'ended_us')::bigint, b->>'exe', b->'argv', (b->>'uid')::int, (b->>'exit_code')::int, b->>'cell'
      FROM records x JOIN runs u ON u.host_id = h AND u.rid = x.rid, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.host_id = h AND x.seq > lo AND x.seq <= hi AND x.kind = 2
    ON CONFLICT DO NOTHING;
  INSERT INTO accesses(host_id, seq, rid, pid, fkey, bits, first_us, last_us, cell, fkind)
    SELECT h, x.seq, x.rid, (b->>0)::int, p.fkey, (b->>1)::int, u.start_us + (b->>4)::bigint,
           u.start_us + (b->>5)::bigint, b->>6, b->>7
      FROM records x JOIN runs u ON u.host_id = h AND u.rid = x.rid
      JOIN paths p ON p.host_id = h AND p.path = x.p1, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.host_id = h AND x.seq > lo AND x.seq <= hi AND x.kind = 3
    ON CONFLICT DO NOTHING;
  INSERT INTO renames(host_id, seq, rid, pid, from_key, to_key, t_us)
    SELECT h, x.seq, x.rid, (b->>0)::int, pf.fkey, pt.fkey, u.start_us + (b->>1)::bigint
      FROM records x JOIN runs u ON u.host_id = h AND u.rid = x.rid
      JOIN paths pt ON pt.host_id = h AND pt.path = x.p1
      JOIN paths pf ON pf.host_id = h AND pf.path = x.p2, LATERAL (SELECT provtrace_jsonb(x.body) AS b) j
     WHERE x.host_id = h AND x.seq > lo AND x.seq <= hi AND x.kind = 4
    ON CONFLICT DO NOTHING;
$$;
