"""W3C PROV export of runs built in a real store: parsed back with the prov library
(PROV-JSON, PROV-N) and lxml (PROV-XML), checked record by record, and validated
against the W3C PROV-XML schema and the PROV-JSON schema the prov package ships."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime

import jsonschema
import prov
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
    ProvSpecialization,
    ProvStart,
    ProvUsage,
)

from provtrace.tracer.export import prov as P
from provtrace.tracer.export.versioned import versions_for

from .test_export_flows import (
    CAFE_ESCAPED,
    command_run,
    load,
    notebook_run,
    store,  # noqa: F401  (fixture)
    unfinished_run,
)

RUN = "provtrace:run.20231114T221320-cmd001"
PROC_A, PROC_B = f"{RUN}.process.4200000", f"{RUN}.process.4200001"
NB = "provtrace:run.20231114T221400-nb0001"
SCHEMAS = os.path.join(os.path.dirname(prov.__file__), "tests", "schemas")


def f(path: str) -> str:
    """A path's entity: every byte but ASCII letters, digits and '-' as _XX."""
    return "f_testhost:" + "".join(c if c.isascii() and (c.isalnum() or c == "-") else f"_{ord(c):02X}"
                                   for c in path)


def v(path: str, n: int) -> str:
    """Version n of a path's entity."""
    return f"{f(path)}.v{n}"


def export(store, docs: list[dict], fmt: str | None = None):  # noqa: F811
    """The PROV document of docs with their file versions from the store (serialized in fmt)."""
    versions = versions_for(store, docs)
    return P.prov_document(docs, versions) if fmt is None else P.serialize(docs, fmt, versions)


def rels(doc: ProvDocument, cls) -> set[tuple]:
    """Each record of a class as the tuple of its formal attribute values (as text)."""
    return {tuple(None if v is None else str(v) for _k, v in r.formal_attributes)
            for r in doc.get_records(cls)}


def extra(doc: ProvDocument, cls, ident: str) -> dict[str, object]:
    (rec,) = [r for r in doc.get_records(cls) if str(r.identifier) == ident]
    return {str(k): (str(v) if hasattr(v, "uri") else v) for k, v in rec.extra_attributes}


def roundtrip(store, docs: list[dict], fmt: str) -> ProvDocument:  # noqa: F811
    data = export(store, docs, fmt)
    parsed = ProvDocument.deserialize(content=data.decode("utf-8"), format=fmt)
    assert parsed == export(store, docs), f"{fmt} does not read back to the same document"
    return parsed


@pytest.mark.parametrize("fmt", ["json", "provn", "xml"])
def test_command_run_reads_back(store, fmt):  # noqa: F811
    doc = roundtrip(store, [load(store, command_run(store))], fmt)
    assert {str(r.identifier) for r in doc.get_records(ProvActivity)} == {RUN, PROC_A, PROC_B}
    # tree: the run started A, A started B; B was informed by A through the pipe
    assert {(a, s) for a, _t, s, _time in rels(doc, ProvStart)} == {(PROC_A, RUN), (PROC_B, PROC_A)}
    assert rels(doc, ProvCommunication) == {(PROC_B, PROC_A)}
    assert {(a, ag) for a, ag, _plan in rels(doc, ProvAssociation)} == {(RUN, "provtrace:user.testhost.1000")}
    assert extra(doc, ProvAgent, "provtrace:user.testhost.1000")["provtrace:user"] == "alice"


def test_command_run_usage_generation_derivation(store):  # noqa: F811
    """Every relation binds to the version it touched (issue 14): the temporary
    name's version derives from the inputs, the final name's from it by the rename."""
    run = load(store, command_run(store))
    doc = export(store, [run])
    used = {(a, e) for a, e, _t in rels(doc, ProvUsage)}
    assert {(PROC_A, v("/w/in.csv", 1)), (PROC_B, v("/w/mid.csv", 1))} <= used
    times = {e: t for a, e, t in rels(doc, ProvUsage) if a == PROC_A}
    (first,) = [x["first"] for x in run["files"] if x["path"] == "/w/in.csv"]
    assert times[v("/w/in.csv", 1)] == str(datetime.fromisoformat(first))  # the access time, in UTC
    gen = {(e, a) for e, a, _t in rels(doc, ProvGeneration)}
    assert {(v("/w/mid.csv", 1), PROC_A), (v("/w/out.csv.tmp", 1), PROC_B), (v("/w/out.csv", 1), PROC_B)} <= gen
    assert {(e, a) for e, a, _t in rels(doc, ProvInvalidation)} == {
        (v("/w/junk.txt", 1), PROC_A), (v("/w/out.csv.tmp", 1), PROC_B)}
    der = {(o, s, a) for o, s, a, _g, _u in rels(doc, ProvDerivation)}
    assert (v("/w/out.csv.tmp", 1), v("/w/mid.csv", 1), PROC_B) in der
    assert (v("/w/out.csv.tmp", 1), v("/w/in.csv", 1), PROC_B) in der  # through the pipe from A
    assert (v("/w/mid.csv", 1), v("/w/in.csv", 1), PROC_A) in der
    (rename,) = [r for r in doc.get_records(ProvDerivation)
                 if str(r.formal_attributes[1][1]) == v("/w/out.csv.tmp", 1)]
    assert str(rename.formal_attributes[0][1]) == v("/w/out.csv", 1)
    assert [str(t) for t in rename.get_asserted_types()] == ["provtrace:Rename"]


def test_context_is_used_by_the_run(store):  # noqa: F811
    doc = export(store, [load(store, command_run(store))])
    used_by_run = {e for a, e, _t in rels(doc, ProvUsage) if a == RUN}
    lib = "provtrace:library.0123456789abcdef0123456789abcdef01234567._2Fusr_2Flib_2Flibm_2Eso_2E6"
    assert {f"{RUN}.context", lib, "provtrace:package.pypi.numpy.1_2E26_2E4",
            "provtrace:package.deb.libc6.2_2E36-9_2Bdeb12u4",
            "provtrace:interpreter.python.3_2E11_2E2._2Fusr_2Fbin_2Fpython3_2E11",
            "provtrace:gpu.GPU-00000000-fake"} == used_by_run
    assert extra(doc, ProvEntity, lib)["provtrace:build_id"] == "0123456789abcdef0123456789abcdef01234567"
    assert extra(doc, ProvEntity, f"{RUN}.context")["provtrace:kernel"] == "6.1.0-test"
    assert extra(doc, ProvEntity, "provtrace:package.deb.libc6.2_2E36-9_2Bdeb12u4")["provtrace:version"] \
        == "2.36-9+deb12u4"


def test_non_utf8_path_keeps_escaped_path_and_raw_bytes(store):  # noqa: F811
    doc = roundtrip(store, [load(store, command_run(store))], "json")
    (ent,) = [r for r in doc.get_records(ProvEntity) if "caf" in str(r.identifier) and ".v" not in str(r.identifier)]
    assert ent.identifier.uri == "urn:provtrace:file:testhost:_2Fw_2Fcaf_E9_2Ecsv"  # the raw byte, _XX
    attrs = {str(k): v for k, v in ent.extra_attributes}
    assert attrs["provtrace:path"] == CAFE_ESCAPED
    assert base64.b64decode(attrs["provtrace:path_b64"]) == b"/w/caf\xe9.csv"


def test_notebook_cells_are_activities_of_the_run(store):  # noqa: F811
    doc = roundtrip(store, [load(store, notebook_run(store))], "json")
    cell_a, cell_b = f"{NB}.cell.cell-a", f"{NB}.cell.cell-b"
    starts = {(a, s) for a, _t, s, _time in rels(doc, ProvStart)}
    assert {(cell_a, NB), (cell_b, NB)} <= starts
    assert extra(doc, ProvActivity, cell_b)["provtrace:status"] == "error"
    assert extra(doc, ProvActivity, cell_a)["provtrace:run"] == NB
    # a cell's accesses are the cell's (as lineage has them), each bound to its version
    used = {(a, e) for a, e, _t in rels(doc, ProvUsage)}
    assert {(cell_a, v("/nb/data.csv", 1)), (cell_b, v("/nb/clean.csv", 1))} <= used
    gen = {(e, a) for e, a, _t in rels(doc, ProvGeneration)}
    # the cell wrote clean.csv.tmp, then renamed it: two versions, both the cell's
    assert {(v("/nb/clean.csv.tmp", 1), cell_a), (v("/nb/clean.csv", 1), cell_a), (v("/nb/model.bin", 1), cell_b)} \
        <= gen


def test_xml_is_well_formed_prov(store):  # noqa: F811
    data = export(store, [load(store, command_run(store))], "xml")
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
        outs.append({fmt: export(s, docs, fmt) for fmt in ("json", "provn", "xml")})
        s.close()
    assert outs[0] == outs[1]


def test_empty_and_unfinished(store):  # noqa: F811
    for fmt in ("json", "provn", "xml"):
        assert ProvDocument.deserialize(content=P.serialize([], fmt).decode(), format=fmt) is not None
    doc = roundtrip(store, [load(store, unfinished_run(store))], "provn")
    (run,) = [r for r in doc.get_records(ProvActivity) if str(r.identifier).endswith("dead01")]
    assert run.get_endTime() is None and run.get_startTime() is not None


def test_several_runs_share_file_entities(store):  # noqa: F811
    docs = [load(store, command_run(store)),
            load(store, command_run(store, run_id="20231114T221330-cmd002", start_ns=3_000_000_000))]
    doc = roundtrip(store, docs, "json")
    ins = [r for r in doc.get_records(ProvEntity) if str(r.identifier) in (f("/w/in.csv"), v("/w/in.csv", 1))]
    assert len(ins) == 2  # the path and its one version, once each
    users = {a for a, e, _t in rels(doc, ProvUsage) if e == v("/w/in.csv", 1)}
    assert users == {PROC_A, "provtrace:run.20231114T221330-cmd002.process.4200000"}


def test_every_node_has_a_label_and_cells_pass_kernel_state(store):  # noqa: F811
    """Issue 14: prov:label on every node; a cell wasInformedBy the cell before it."""
    from prov.model import PROV_LABEL, ProvElement

    docs = [load(store, command_run(store)), load(store, notebook_run(store))]
    doc = roundtrip(store, docs, "json")
    labels = {str(r.identifier): next(iter(r.get_attribute(PROV_LABEL)), None)
              for r in doc.get_records(ProvElement)}
    assert labels and all(labels.values())
    assert labels[f("/w/in.csv")] == "/w/in.csv" and labels[PROC_A] == "/nonexistent/bin/tool"
    assert labels["provtrace:package.pypi.numpy.1_2E26_2E4"] == "numpy 1.26.4"
    assert labels[v("/w/in.csv", 1)] == "/w/in.csv@1"
    assert labels[f"{NB}.cell.cell-a"].startswith("cell ")
    informed = {(a, b) for a, b in rels(doc, ProvCommunication)}
    assert (f"{NB}.cell.cell-b", f"{NB}.cell.cell-a") in informed
    (kernel,) = [r for r in doc.get_records(ProvCommunication)
                 if str(r.formal_attributes[0][1]) == f"{NB}.cell.cell-b"]
    assert [str(t) for t in kernel.get_asserted_types()] == ["provtrace:KernelState"]


# --- issue 14: one entity per file version; ids PROV-XML accepts ------------------------


def two_runs(store) -> list[dict]:  # noqa: F811
    """cmd001 and cmd002 both read in.csv (never written: one version, from before
    tracing) and both write mid.csv, out.csv.tmp and out.csv: two versions of each."""
    return [load(store, command_run(store)),
            load(store, command_run(store, run_id="20231114T221330-cmd002", start_ns=3_000_000_000))]


def test_one_entity_per_version_each_specializing_its_path(store):  # noqa: F811
    doc = roundtrip(store, two_runs(store), "json")
    spec = {(e, g) for e, g in rels(doc, ProvSpecialization)}
    assert {(v("/w/mid.csv", 1), f("/w/mid.csv")), (v("/w/mid.csv", 2), f("/w/mid.csv")),
            (v("/w/out.csv", 2), f("/w/out.csv")), (v("/w/in.csv", 1), f("/w/in.csv"))} <= spec
    assert v("/w/in.csv", 2) not in {e for e, _g in spec}
    attrs = extra(doc, ProvEntity, v("/w/out.csv", 2))
    assert attrs["provtrace:path"] == "/w/out.csv" and attrs["provtrace:version"] == 2
    assert attrs["provtrace:how"] == "rename" and attrs["provtrace:writer_run"] == "20231114T221330-cmd002"
    assert attrs["provtrace:lineage_id"] == "file:/w/out.csv@2"  # as `provtrace lineage` names it
    # each run's reader used the version its own writer made, not "the path"
    cmd2 = "provtrace:run.20231114T221330-cmd002"
    used = {(a, e) for a, e, _t in rels(doc, ProvUsage)}
    assert (PROC_B, v("/w/mid.csv", 1)) in used and (f"{cmd2}.process.4200001", v("/w/mid.csv", 2)) in used
    assert (PROC_B, v("/w/mid.csv", 2)) not in used


def test_prov_constraints_generation_and_invalidation_are_unique(store):  # noqa: F811
    """PROV-CONSTRAINTS 24 and 25: no entity generated, or invalidated, twice."""
    docs = [*two_runs(store), load(store, notebook_run(store))]
    doc = export(store, docs)
    for cls in (ProvGeneration, ProvInvalidation):
        ents = [e for e, _a, _t in rels(doc, cls)]
        assert ents and len(ents) == len(set(ents)), f"an entity in more than one {cls.__name__}"
    generated = {e for e, _a, _t in rels(doc, ProvGeneration)}
    assert {v("/w/mid.csv", 1), v("/w/mid.csv", 2), v("/w/out.csv", 1), v("/w/out.csv", 2)} <= generated


def _xsd() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(os.path.join(SCHEMAS, "prov.xsd")))


def test_prov_xml_validates_against_the_w3c_schema(store):  # noqa: F811
    docs = [*two_runs(store), load(store, notebook_run(store)), load(store, unfinished_run(store))]
    root = etree.fromstring(export(store, docs, "xml"))
    schema = _xsd()
    assert schema.validate(root), "\n".join(str(e) for e in list(schema.error_log)[:5])
    # and the schema can fail: an id with '/' in its local name, as before issue 14
    bad = root.find("{http://www.w3.org/ns/prov#}entity")
    bad.set("{http://www.w3.org/ns/prov#}id", "provtrace:run/x")
    assert not schema.validate(root)


def test_prov_json_validates_against_the_prov_json_schema(store):  # noqa: F811
    with open(os.path.join(SCHEMAS, "prov-json.schema.json"), encoding="utf-8") as fh:
        schema = json.load(fh)
    validator = jsonschema.validators.validator_for(schema)(schema)
    docs = [*two_runs(store), load(store, notebook_run(store)), load(store, unfinished_run(store))]
    data = json.loads(export(store, docs, "json"))
    errors = list(validator.iter_errors(data))
    assert not errors, errors[0].message
    data["wasGeneratedBy"] = {"_:g": {"prov:entity": 7}}  # a number where a QName belongs
    assert list(validator.iter_errors(data))


def test_every_local_name_is_an_ncname(store):  # noqa: F811
    """Every id in the document, for any path bytes, is an NCName (xs:QName's local part)."""
    import re  # noqa: PLC0415

    ncname = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*\Z")
    docs = [*two_runs(store), load(store, notebook_run(store))]
    for rec in export(store, docs).get_records():
        for qn in [rec.identifier, *(val for _k, val in rec.formal_attributes)]:
            if hasattr(qn, "localpart"):
                assert ncname.match(qn.localpart), qn
    for odd in ("/", "", "1x", ".x", "a b/ü\u00e9", "x.v1", "_2F"):
        assert ncname.match(P._local(odd)), odd
    assert P._local("/x.v1") != P._local("/x", "v1")  # a path ending .v1 is not a version
