"""The file-version model (tracer/lineage/versions.py) against a brute-force reference.

Hypothesis draws random interleavings of traced writes (whole or in place),
read-modify-writes, reads, renames and deletes by many runs, and changes made
outside tracing, over a few paths. The reference replays them on a dict
(path -> the token of the write whose bytes it holds) and says, for each read,
which write produced the bytes it saw. The model sees only what the store
would hold: the traced events, and a fingerprint of each path a traced step
touched, taken right after it (as at a run's or cell's end). Every read must
be bound to the version of that very write, following renames; a read of
content changed outside tracing must be bound to a version no traced process
produced. (One case is undecidable from the store, and left out: bytes changed
outside tracing, then read and rewritten in place by one process before any
fingerprint saw them.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from provtrace.tracer.lineage import versions as V

PATHS = ("/w/a", "/w/b", "/w/c", "/w/d")
OPS = ("write", "append", "rmw", "read", "rename", "delete", "outside", "outside_delete")

op = st.tuples(st.sampled_from(OPS), st.sampled_from(PATHS), st.sampled_from(PATHS))


def _replay(ops):
    """(events by path, [(read act, path, expected producer)]): producer is the
    writing Act, or "outside" for bytes no traced process wrote."""
    disk: dict[str, tuple] = {}  # path -> (token, producer)
    events: dict[str, list[V.Event]] = {p: [] for p in PATHS}
    expected = []
    unseen: set[str] = set()  # changed outside tracing, and no fingerprint taken since
    seq = 0

    def fp(path, t):
        nonlocal seq
        seq += 1
        body = {"type": "file", "sha256": f"{disk[path][0]:064x}"} if path in disk else {"error": "vanished"}
        events[path].append(V.Event(t + 1, seq, V.FP, fp=body))

    for i, (kind, path, other) in enumerate(ops):
        t = i * 10
        seq += 1
        act = V.Act(rid=i // 3, pid=i)  # a few steps per run
        touched = [path]
        if kind in ("write", "append"):
            events[path].append(V.Event(t, seq, V.WRITE, act, whole=kind == "write"))
            disk[path] = (i + 1, act)
        elif kind == "rmw":  # one process reads the file, then rewrites it in place
            if path not in disk:
                continue
            events[path] += [V.Event(t, seq, V.READ, act),
                             V.Event(t + 5, seq, V.WRITE, act, whole=False)]
            if path not in unseen:  # (no fingerprint ever saw those bytes: nothing can tell)
                expected.append((act, path, t, disk[path][1]))
            disk[path] = (i + 1, act)
        elif kind == "read":
            if path not in disk:
                continue
            events[path].append(V.Event(t, seq, V.READ, act))
            expected.append((act, path, t, disk[path][1]))
        elif kind == "rename":
            if path not in disk or other == path:
                continue
            events[path].append(V.Event(t, seq, V.RENAME_OUT, act, other=other))
            events[other].append(V.Event(t, seq, V.RENAME_IN, act, other=path))
            disk[other] = disk.pop(path)
            touched.append(other)
        elif kind == "delete":
            if path not in disk:
                continue
            events[path].append(V.Event(t, seq, V.DELETE, act))
            del disk[path]
        elif kind == "outside":  # nobody traced sees it happen
            disk[path] = (i + 1, "outside")
            unseen.add(path)
            continue
        elif kind == "outside_delete":
            disk.pop(path, None)
            continue
        for p in touched:
            fp(p, t + 5)
            unseen.discard(p)
    return events, expected


def _producer(hists: dict[str, V.History], v: V.Version | None):
    """The write whose bytes version v holds: renames followed back to it."""
    for _ in range(1000):
        if v is None or v.how != "rename":
            break
        v = hists[v.src_path].moved_out.get(v.start[:2])
    if v is None:
        return None
    return "outside" if v.act is None else v.act


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=40))
def test_every_read_is_bound_to_the_write_it_saw(ops):
    events, expected = _replay(ops)
    hists = V.build(events)
    for act, path, t, want in expected:
        (bound,) = [v for v in hists[path].versions for r in v.reads if r.act == act and r.key[0] == t]
        assert _producer(hists, bound) == want, (path, t, hists[path].versions)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=40))
def test_versions_follow_one_another(ops):
    """Per path: versions in time order, numbered 1.., none overlapping, each
    rename version moved from a version of its source."""
    events, _ = _replay(ops)
    hists = V.build(events)
    for h in hists.values():
        assert [v.n for v in h.versions] == list(range(1, len(h.versions) + 1))
        for a, b in zip(h.versions, h.versions[1:]):
            assert a.start <= b.start and a.end is not None and a.end <= b.start
        for v in h.versions:
            if v.how == "rename":
                assert hists[v.src_path].moved_out.get(v.start[:2]) is not None


def test_a_change_outside_tracing_is_its_own_version():
    """Written by a traced run, seen by its fingerprint, changed by hand, then
    read: the read sees content no traced process produced."""
    w, r = V.Act(1, 10), V.Act(2, 20)
    events = [V.Event(100, 1, V.WRITE, w), V.Event(110, 2, V.FP, fp={"type": "file", "sha256": "aa"}),
              V.Event(300, 3, V.READ, r), V.Event(310, 4, V.FP, fp={"type": "file", "sha256": "bb"})]
    h = V.history("/w/o", events)
    assert [(v.how, v.act) for v in h.versions] == [("write", w), ("outside", None)]
    assert h.versions[1].reads == [V.Read(r, (300, 3, 0.0))] and h.versions[0].reads == []
    assert h.at((200, 0, 0.0)) is h.versions[1]  # after the last moment "aa" was seen


def test_a_read_before_any_traced_write_sees_what_was_there():
    r, w = V.Act(1, 10), V.Act(2, 20)
    h = V.history("/w/in", [V.Event(50, 1, V.READ, r), V.Event(60, 2, V.WRITE, w)])
    first, second = h.versions
    assert first.how == "outside" and first.reads[0].act == r and second.act == w
    assert h.at(V.FOREVER) is second and h.at((55, 0, 0.0)) is first


def test_deleted_then_absent():
    w, d = V.Act(1, 10), V.Act(1, 11)
    h = V.history("/w/t", [V.Event(10, 1, V.WRITE, w), V.Event(20, 2, V.DELETE, d)])
    assert h.at((15, 0, 0.0)) is h.versions[0] and h.at(V.FOREVER) is None
