"""W3C PROV export of runs built in a real store: parsed back with the prov library
(PROV-JSON, PROV-N) and lxml (PROV-XML), and checked record by record."""

from __future__ import annotations

import base64
from datetime import datetime

import pytest
from lxml import etree
from prov.model import (
    ProvActivity,
    ProvAgent,
    ProvAssociation,
    ProvCommunication,
    ProvDerivation,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvInvalidation,
    ProvStart,
    ProvUsage,
)

from provtrace.tracer.export import prov as P

from .test_export_flows import (
    CAFE_ESCAPED,
    command_run,
    load,
    notebook_run,
    store,  # noqa: F401  (fixture)
    unfinished_run,
)

RUN = "provtrace:run/20231114T221320-cmd001"
PROC_A, PROC_B = f"{RUN}/process/4200000", f"{RUN}/process/4200001"
NB = "provtrace:run/20231114T221400-nb0001"


def f(path: str) -> str:
    return f"f_testhost:{path}"


def rels(doc: ProvDocument, cls) -> set[tuple]:
    """Each record of a class as the tuple of its formal attribute values (as text)."""
    return {tuple(None if v is None else str(v) for _k, v in r.formal_attributes)
            for r in doc.get_records(cls)}


def extra(doc: ProvDocument, cls, ident: str) -> dict[str, object]:
    (rec,) = [r for r in doc.get_records(cls) if str(r.identifier) == ident]
    return {str(k): (str(v) if hasattr(v, "uri") else v) for k, v in rec.extra_attributes}


def roundtrip(docs: list[dict], fmt: str) -> ProvDocument:
    data = P.serialize(docs, fmt)
    parsed = ProvDocument.deserialize(content=data.decode("utf-8"), format=fmt)
    assert parsed == P.prov_document(docs), f"{fmt} does not read back to the same document"
    return parsed


@pytest.mark.parametrize("fmt", ["json", "provn", "xml"])
def test_command_run_reads_back(store, fmt):  # noqa: F811
    doc = roundtrip([load(store, command_run(store))], fmt)
    assert {str(r.identifier) for r in doc.get_records(ProvActivity)} == {RUN, PROC_A, PROC_B}
    # tree: the run started A, A started B; B was informed by A through the pipe
    assert {(a, s) for a, _t, s, _time in rels(doc, ProvStart)} == {(PROC_A, RUN), (PROC_B, PROC_A)}
    assert rels(doc, ProvCommunication) == {(PROC_B, PROC_A)}
    assert {(a, ag) for a, ag, _plan in rels(doc, ProvAssociation)} == {(RUN, "provtrace:user/testhost/1000")}
    assert extra(doc, ProvAgent, "provtrace:user/testhost/1000")["provtrace:user"] == "alice"


def test_command_run_usage_generation_derivation(store):  # noqa: F811
    run = load(store, command_run(store))
    doc = P.prov_document([run])
    used = {(a, e) for a, e, _t in rels(doc, ProvUsage)}
    assert {(PROC_A, f("/w/in.csv")), (PROC_B, f("/w/mid.csv"))} <= used
    times = {e: t for a, e, t in rels(doc, ProvUsage) if a == PROC_A}
    (first,) = [x["first"] for x in run["files"] if x["path"] == "/w/in.csv"]
    assert times[f("/w/in.csv")] == str(datetime.fromisoformat(first))  # the access time, in UTC
    gen = {(e, a) for e, a, _t in rels(doc, ProvGeneration)}
    assert {(f("/w/mid.csv"), PROC_A), (f("/w/out.csv.tmp"), PROC_B), (f("/w/out.csv"), PROC_B)} <= gen
    assert {(e, a) for e, a, _t in rels(doc, ProvInvalidation)} == {
        (f("/w/junk.txt"), PROC_A), (f("/w/out.csv.tmp"), PROC_B)}
    der = {(o, s, a) for o, s, a, _g, _u in rels(doc, ProvDerivation)}
    assert (f("/w/out.csv"), f("/w/mid.csv"), PROC_B) in der
    assert (f("/w/out.csv"), f("/w/in.csv"), PROC_B) in der  # through the pipe from A
    assert (f("/w/mid.csv"), f("/w/in.csv"), PROC_A) in der
    (rename,) = [r for r in doc.get_records(ProvDerivation)
                 if str(r.formal_attributes[1][1]) == f("/w/out.csv.tmp")]
    assert str(rename.formal_attributes[0][1]) == f("/w/out.csv")
    assert [str(t) for t in rename.get_asserted_types()] == ["provtrace:Rename"]


def test_context_is_used_by_the_run(store):  # noqa: F811
    doc = P.prov_document([load(store, command_run(store))])
    used_by_run = {e for a, e, _t in rels(doc, ProvUsage) if a == RUN}
    lib = "provtrace:library/0123456789abcdef0123456789abcdef01234567/usr/lib/libm.so.6"
    assert {f"{RUN}/context", lib, "provtrace:package/pypi/numpy/1.26.4",
            "provtrace:package/deb/libc6/2.36-9%2Bdeb12u4",
            "provtrace:interpreter/python/3.11.2/usr/bin/python3.11",
            "provtrace:gpu/GPU-00000000-fake"} == used_by_run
    assert extra(doc, ProvEntity, lib)["provtrace:build_id"] == "0123456789abcdef0123456789abcdef01234567"
    assert extra(doc, ProvEntity, f"{RUN}/context")["provtrace:kernel"] == "6.1.0-test"
    assert extra(doc, ProvEntity, "provtrace:package/deb/libc6/2.36-9%2Bdeb12u4")["provtrace:version"] \
        == "2.36-9+deb12u4"


def test_non_utf8_path_keeps_escaped_path_and_raw_bytes(store):  # noqa: F811
    doc = roundtrip([load(store, command_run(store))], "json")
    (ent,) = [r for r in doc.get_records(ProvEntity) if "caf" in str(r.identifier)]
    assert ent.identifier.uri == "file://testhost/w/caf%E9.csv"  # the raw byte, percent-encoded
    attrs = {str(k): v for k, v in ent.extra_attributes}
    assert attrs["provtrace:path"] == CAFE_ESCAPED
    assert base64.b64decode(attrs["provtrace:path_b64"]) == b"/w/caf\xe9.csv"


def test_notebook_cells_are_activities_of_the_run(store):  # noqa: F811
    doc = roundtrip([load(store, notebook_run(store))], "json")
    cell_a, cell_b = f"{NB}/cell/cell-a", f"{NB}/cell/cell-b"
    starts = {(a, s) for a, _t, s, _time in rels(doc, ProvStart)}
    assert {(cell_a, NB), (cell_b, NB)} <= starts
    assert extra(doc, ProvActivity, cell_b)["provtrace:status"] == "error"
    assert extra(doc, ProvActivity, cell_a)["provtrace:run"] == NB
    used = {(a, e) for a, e, _t in rels(doc, ProvUsage)}
    assert {(cell_a, f("/nb/data.csv")), (cell_b, f("/nb/clean.csv"))} <= used
    gen = {(e, a) for e, a, _t in rels(doc, ProvGeneration)}
    # the cell wrote clean.csv.tmp; under the cell it counts as its final name
    assert {(f("/nb/clean.csv"), cell_a), (f("/nb/model.bin"), cell_b)} <= gen
    assert (f("/nb/clean.csv.tmp"), cell_a) not in gen


def test_xml_is_well_formed_prov(store):  # noqa: F811
    data = P.serialize([load(store, command_run(store))], "xml")
    root = etree.fromstring(data)
    assert root.tag == "{http://www.w3.org/ns/prov#}document"
    ids = {e.get("{http://www.w3.org/ns/prov#}id") for e in root.iter("{http://www.w3.org/ns/prov#}entity")}
    assert f("/w/out.csv") in ids


def test_same_store_same_bytes_and_run_order_does_not_matter(tmp_path):
    from provtrace.tracer.store import sqlite as S  # noqa: PLC0415

    outs = []
    for name in ("a.db", "b.db"):
        s = S.Store(str(tmp_path / name))
        docs = [load(s, command_run(s)), load(s, notebook_run(s))]
        outs.append({fmt: P.serialize(docs, fmt) for fmt in ("json", "provn", "xml")})
        s.close()
    assert outs[0] == outs[1]


def test_empty_and_unfinished(store):  # noqa: F811
    for fmt in ("json", "provn", "xml"):
        assert ProvDocument.deserialize(content=P.serialize([], fmt).decode(), format=fmt) is not None
    doc = roundtrip([load(store, unfinished_run(store))], "provn")
    (run,) = [r for r in doc.get_records(ProvActivity) if str(r.identifier).endswith("dead01")]
    assert run.get_endTime() is None and run.get_startTime() is not None


def test_several_runs_share_file_entities(store):  # noqa: F811
    docs = [load(store, command_run(store)),
            load(store, command_run(store, run_id="20231114T221330-cmd002", start_ns=3_000_000_000))]
    doc = roundtrip(docs, "json")
    ins = [r for r in doc.get_records(ProvEntity) if str(r.identifier) == f("/w/in.csv")]
    assert len(ins) == 1
    users = {a for a, e, _t in rels(doc, ProvUsage) if e == f("/w/in.csv")}
    assert users == {PROC_A, "provtrace:run/20231114T221330-cmd002/process/4200000"}


def test_every_node_has_a_label_and_cells_pass_kernel_state(store):  # noqa: F811
    """Issue 14: prov:label on every node; a cell wasInformedBy the cell before it."""
    from prov.model import PROV_LABEL, ProvElement

    docs = [load(store, command_run(store)), load(store, notebook_run(store))]
    doc = roundtrip(docs, "json")
    labels = {str(r.identifier): next(iter(r.get_attribute(PROV_LABEL)), None)
              for r in doc.get_records(ProvElement)}
    assert labels and all(labels.values())
    assert labels[f("/w/in.csv")] == "/w/in.csv" and labels[PROC_A] == "/nonexistent/bin/tool"
    assert labels["provtrace:package/pypi/numpy/1.26.4"] == "numpy 1.26.4"
    assert labels[f"{NB}/cell/cell-a"].startswith("cell ")
    informed = {(a, b) for a, b in rels(doc, ProvCommunication)}
    assert (f"{NB}/cell/cell-b", f"{NB}/cell/cell-a") in informed
    (kernel,) = [r for r in doc.get_records(ProvCommunication)
                 if str(r.formal_attributes[0][1]) == f"{NB}/cell/cell-b"]
    assert [str(t) for t in kernel.get_asserted_types()] == ["provtrace:KernelState"]
