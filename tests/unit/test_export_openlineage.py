"""OpenLineage export of runs built in a real store: every line a RunEvent validated
against the OpenLineage spec's JSON schema, and each standard facet against its own
(tests/fixtures/openlineage, fetched from the spec's repository; issue 14)."""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import uuid
from datetime import datetime

import jsonschema
import pytest
from referencing import Registry, Resource

from provtrace.tracer.export import openlineage as OL
from provtrace.tracer.store import sqlite as S

from .test_export_flows import (
    CAFE_ESCAPED,
    command_run,
    load,
    notebook_run,
    store,  # noqa: F401  (fixture)
    unfinished_run,
)

TABLE = {"format": "csv", "columns": [{"name": "x", "type": "int64"}, {"name": "label", "type": "string"}],
         "rows": 3, "sampled": False}
EVENT_TYPES = {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}
SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "fixtures", "openlineage")
STANDARD = "https://openlineage.io/spec/"


@functools.cache
def _registry() -> Registry:
    """The fixture schemas, each under its $id (what _schemaURL and $ref name)."""
    resources = []
    for name in sorted(os.listdir(SCHEMAS)):
        if name.endswith(".json"):
            with open(os.path.join(SCHEMAS, name), encoding="utf-8") as fh:
                schema = json.load(fh)
            resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def schema_errors(schema_url: str, instance: dict) -> list[str]:
    """Errors of instance against the schema a URL (with its #/$defs/... fragment) names."""
    validator = jsonschema.Draft202012Validator(
        {"$ref": schema_url}, registry=_registry(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def _check_facets(facets: dict) -> None:
    for name, facet in facets.items():
        assert facet["_producer"] and facet["_schemaURL"], f"facet {name} lacks _producer/_schemaURL"
        if facet["_schemaURL"].startswith(STANDARD):  # ours (urn:provtrace:...) are checked as base facets
            assert not schema_errors(facet["_schemaURL"], facet), (name, schema_errors(facet["_schemaURL"], facet))


def check_event(ev: dict) -> None:
    """The event against the spec's schema (the base facets included), each standard
    facet against its own schema, and what the schema cannot say."""
    assert ev["schemaURL"].endswith("/OpenLineage.json#/$defs/RunEvent")
    errors = schema_errors(ev["schemaURL"], ev)
    assert not errors, errors
    assert ev["eventType"] in EVENT_TYPES
    assert datetime.fromisoformat(ev["eventTime"]).tzinfo is not None
    assert ev["producer"] == OL.PRODUCER and ev["schemaURL"].startswith("https://openlineage.io/spec/")
    assert str(uuid.UUID(ev["run"]["runId"])) == ev["run"]["runId"]
    assert isinstance(ev["job"]["namespace"], str) and ev["job"]["namespace"]
    assert isinstance(ev["job"]["name"], str) and ev["job"]["name"]
    _check_facets(ev["run"].get("facets", {}))
    _check_facets(ev["job"].get("facets", {}))
    for ds in ev.get("inputs", []) + ev.get("outputs", []):
        assert ds["namespace"].startswith("file://") and ds["name"].startswith("/")
        _check_facets(ds.get("facets", {}))
        _check_facets(ds.get("inputFacets", {}))
        _check_facets(ds.get("outputFacets", {}))


def parse(data: bytes) -> list[dict]:
    lines = data.decode("utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    for ev in events:
        check_event(ev)
    return events


def test_command_run_start_and_complete(store):  # noqa: F811
    start, done = parse(OL.serialize([load(store, command_run(store))]))
    assert (start["eventType"], done["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == done["run"]["runId"]
    assert start["eventTime"] < done["eventTime"]
    assert done["job"] == start["job"]
    assert (done["job"]["namespace"], done["job"]["name"]) == ("provtrace://testhost", "tool")
    assert done["job"]["facets"]["jobType"]["jobType"] == "COMMAND"
    assert [(i["namespace"], i["name"]) for i in done["inputs"]] == [
        ("file://testhost", CAFE_ESCAPED), ("file://testhost", "/w/in.csv")]
    outs = {o["name"]: o for o in done["outputs"]}
    assert sorted(outs) == ["/w/mid.csv", "/w/out.csv"]  # no temp name, no deleted junk
    change = outs["/w/out.csv"]["facets"]["lifecycleStateChange"]
    assert change["lifecycleStateChange"] == "RENAME"
    assert change["previousIdentifier"] == {"name": "/w/out.csv.tmp", "namespace": "file://testhost"}
    assert start["outputs"] == []
    facet = done["run"]["facets"]["provtrace"]
    assert facet["id"] == "20231114T221320-cmd001" and facet["exitCode"] == 0 and facet["complete"] is True
    assert facet["gpus"] == [{"name": "FAKE GPU (test)", "uuid": "GPU-00000000-fake"}]


def test_non_utf8_dataset_carries_raw_bytes(store):  # noqa: F811
    _start, done = parse(OL.serialize([load(store, command_run(store))]))
    (cafe,) = [i for i in done["inputs"] if i["name"] == CAFE_ESCAPED]
    assert base64.b64decode(cafe["facets"]["provtrace"]["pathB64"]) == b"/w/caf\xe9.csv"


def test_failed_command_is_fail(store):  # noqa: F811
    _start, done = parse(OL.serialize([load(store, command_run(store, exit_code=3))]))
    assert done["eventType"] == "FAIL" and done["run"]["facets"]["provtrace"]["exitCode"] == 3


def test_notebook_run_and_each_cell_get_a_pair(store):  # noqa: F811
    events = parse(OL.serialize([load(store, notebook_run(store))]))
    by_job: dict[str, list[dict]] = {}
    for ev in events:
        by_job.setdefault(ev["job"]["name"], []).append(ev)
    assert sorted(by_job) == ["analysis", "analysis.cell.cell-a", "analysis.cell.cell-b"]
    assert [e["eventType"] for e in by_job["analysis"]] == ["START", "FAIL"]  # the run exited 1
    assert [e["eventType"] for e in by_job["analysis.cell.cell-a"]] == ["START", "COMPLETE"]
    assert [e["eventType"] for e in by_job["analysis.cell.cell-b"]] == ["START", "FAIL"]
    nb_run = by_job["analysis"][0]["run"]["runId"]
    a_done = by_job["analysis.cell.cell-a"][1]
    assert a_done["run"]["facets"]["parent"]["run"]["runId"] == nb_run
    parent_job = a_done["run"]["facets"]["parent"]["job"]
    assert (parent_job["namespace"], parent_job["name"]) == ("provtrace://testhost", "analysis")
    assert a_done["run"]["runId"] != nb_run
    assert [i["name"] for i in a_done["inputs"]] == ["/nb/data.csv"]
    assert [o["name"] for o in a_done["outputs"]] == ["/nb/clean.csv"]
    assert a_done["run"]["facets"]["provtrace"]["cell"]["index"] == 0
    # the notebook's own inputs: data.csv only; clean.csv was made by the run before it was read
    assert [i["name"] for i in by_job["analysis"][1]["inputs"]] == ["/nb/data.csv"]


def test_unfinished_run_has_start_only(store):  # noqa: F811
    (only,) = parse(OL.serialize([load(store, unfinished_run(store))]))
    assert only["eventType"] == "START"


def test_deterministic_and_empty(tmp_path):
    outs = []
    for name in ("a.db", "b.db"):
        s = S.Store(str(tmp_path / name))
        outs.append(OL.serialize([load(s, notebook_run(s)), load(s, command_run(s))]))
        s.close()
    assert outs[0] == outs[1]
    # runs come out in start order whatever order they were given in
    names = [json.loads(line)["job"]["name"] for line in outs[0].decode().splitlines()]
    assert names[:2] == ["tool", "tool"]
    assert OL.serialize([]) == b""


def test_a_rename_only_run_has_the_old_name_in_and_the_new_one_out(store):  # noqa: F811
    """Issue 14: `mv report.md final.md` keeps the chain in a catalog."""
    from provtrace.tracer.clock import Clock
    from provtrace.tracer.model import events as E
    from provtrace.tracer.model.processes import AT_FDCWD, Tracker
    from provtrace.tracer.store.writer import RunWriter

    from .test_export_flows import CREATED, OFFSET_NS, _clock, _end, _new_run

    rid, start_us = _new_run(store, "20231114T221600-mv0001", "command", 12_000_000_000, argv=("mv",))
    tracker = Tracker(RunWriter(store, rid, Clock(offset_ns=OFFSET_NS), base_us=start_us), CREATED)
    t = _clock(12_001_000_000)
    for ev in (E.Exec(t(), 90, 90, 1, 90, 1000, "/usr/bin/mv"),
               E.Rename(t(), 90, 90, 1, AT_FDCWD, AT_FDCWD, 0, "/w/report.md", "/w/final.md"),
               E.Exit(t(), 90, 90, 1, 0, 7)):
        tracker.handle(ev)
    tracker.finish_all(t())
    _end(store, rid, t())
    _start, done = parse(OL.serialize([load(store, rid)]))
    assert [i["name"] for i in done["inputs"]] == ["/w/report.md"]
    (out,) = done["outputs"]
    change = out["facets"]["lifecycleStateChange"]
    assert out["name"] == "/w/final.md" and change["lifecycleStateChange"] == "RENAME"
    assert change["previousIdentifier"] == {"name": "/w/report.md", "namespace": "file://testhost"}


def test_failures_carry_an_error_message(store):  # noqa: F811
    start, done = parse(OL.serialize([load(store, command_run(store, exit_code=3))]))
    assert "errorMessage" not in start["run"]["facets"]
    err = done["run"]["facets"]["errorMessage"]
    assert err["message"] == "exited with status 3" and err["programmingLanguage"] == "python"
    events = parse(OL.serialize([load(store, notebook_run(store))]))
    (cell_fail,) = [e for e in events if e["job"]["name"] == "analysis.cell.cell-b" and e["eventType"] == "FAIL"]
    assert cell_fail["run"]["facets"]["errorMessage"]["message"]
    (cell_ok,) = [e for e in events if e["job"]["name"] == "analysis.cell.cell-a" and e["eventType"] == "COMPLETE"]
    assert "errorMessage" not in cell_ok["run"]["facets"]


def test_fingerprinted_datasets_carry_their_version(store):  # noqa: F811
    rid = command_run(store)
    for path, sha in (("/w/in.csv", "aa" * 32), ("/w/out.csv", "bb" * 32)):
        store.append(rid, S.FINGERPRINT, {"cell": None, "at_us": 1, "type": "file", "sha256": sha,
                                          "size_bytes": 1}, p1=path)
    store.flush()
    _start, done = parse(OL.serialize([load(store, rid)]))
    ins = {i["name"]: i["facets"] for i in done["inputs"]}
    outs = {o["name"]: o["facets"] for o in done["outputs"]}
    assert ins["/w/in.csv"]["version"]["datasetVersion"] == "aa" * 32
    assert outs["/w/out.csv"]["version"]["datasetVersion"] == "bb" * 32  # the renamed-in content
    assert "version" not in outs["/w/mid.csv"]  # never fingerprinted


def test_job_names_are_stable_across_reruns():
    """Issue 14: the label, else the script or notebook, never the whole argv."""
    def name(argv, label=None, cwd="/w"):
        return OL._job_name({"id": "r", "argv": argv, "cwd": cwd, "label": label})
    assert name(["python3", "-u", "train.py", "--lr", "0.1"]) == name(["python3", "-u", "train.py", "--lr", "0.2"])
    assert name(["python3", "-u", "train.py", "--lr", "0.1"]) == "/w/train.py"
    assert name(["Rscript", "/abs/fit.R", "x"]) == "/abs/fit.R"
    assert name(["sh", "-c", "cat a > b"]) == "sh" and name(["make", "all"]) == "make"
    assert name(["python3", "train.py"], label="nightly") == "nightly" and name([]) == "run r"
    assert name(["provtrace", "notebook", "run", "/n/analysis.ipynb"]) == "/n/analysis.ipynb"


def test_the_schemas_can_fail(store):  # noqa: F811
    """The validation is real: events or facets broken as a consumer would reject them fail it."""
    events = parse(OL.serialize([load(store, notebook_run(store))]))
    cell = next(e for e in events if "parent" in e["run"]["facets"])
    assert not schema_errors(cell["schemaURL"], cell)
    for path, value in ((("run", "runId"), "not-a-uuid"), (("eventTime",), None), (("job", "name"), 7)):
        bad = copy.deepcopy(cell)
        *up, last = path
        functools.reduce(dict.__getitem__, up, bad)[last] = value
        assert schema_errors(bad["schemaURL"], bad), path
    parent = copy.deepcopy(cell["run"]["facets"]["parent"])
    del parent["run"]["runId"]
    assert schema_errors(parent["_schemaURL"], parent)


def test_cells_are_child_runs_of_their_notebook_run(store):  # noqa: F811
    events = parse(OL.serialize([load(store, notebook_run(store))]))
    (nb_run,) = {e["run"]["runId"] for e in events if "parent" not in e["run"]["facets"]}
    cells = [e for e in events if "parent" in e["run"]["facets"]]
    assert cells and all(e["run"]["facets"]["parent"]["run"]["runId"] == nb_run for e in cells)
    assert all(e["run"]["runId"] != nb_run for e in cells)


# facets openlineage-python's client adds as it sends an event (the push, issue 17)
ADDED_ON_EMIT = {"TagsRunFacet.json"}


@pytest.mark.parametrize("facet", sorted(f for f in os.listdir(SCHEMAS)
                                         if f.endswith("Facet.json") and f not in ADDED_ON_EMIT))
def test_every_fixture_schema_is_one_the_export_uses(store, facet):  # noqa: F811
    """No stale fixture: each facet schema kept is one some export names by _schemaURL."""
    rid = command_run(store, exit_code=3)
    docs = [load(store, rid), load(store, notebook_run(store))]
    docs[0]["files"][0]["sha256"] = "0" * 64  # a fingerprinted dataset: DatasetVersion
    docs[0]["files"][0]["schema"] = TABLE  # a captured schema: Schema
    docs[0]["run"]["argv"] = ["python3", "-c", "print(1)"]  # inline code: SourceCode
    urls = {f["_schemaURL"].split("#")[0] for line in OL.serialize(docs).decode().splitlines()
            for f in _all_facets(json.loads(line))}
    with open(os.path.join(SCHEMAS, facet), encoding="utf-8") as fh:
        assert json.load(fh)["$id"] in urls


def _all_facets(ev: dict) -> list[dict]:
    out = [*ev["run"].get("facets", {}).values(), *ev["job"].get("facets", {}).values()]
    for ds in ev.get("inputs", []) + ev.get("outputs", []):
        out += [*ds.get("facets", {}).values(), *ds.get("outputFacets", {}).values()]
    return out


def _outputs(events: list[dict]) -> dict[str, dict]:
    return {o["name"]: o for e in events if e["eventType"] != "START" for o in e["outputs"]}


def test_outputs_carry_the_bytes_written_and_the_schema_when_captured(store):  # noqa: F811
    doc = load(store, command_run(store))
    plain = _outputs(parse(OL.serialize([doc])))
    written = {f["path"]: 0 for f in doc["files"]}
    for f in doc["files"]:
        written[f["path"]] += f["bytes_written"] or 0
    for name, o in plain.items():  # a renamed output: the bytes written under its temporary name
        was = o["facets"].get("lifecycleStateChange", {}).get("previousIdentifier", {}).get("name", name)
        assert o["outputFacets"]["outputStatistics"]["size"] == written[was] > 0, name
    assert all("schema" not in o["facets"] for o in plain.values())  # no capture, no facet
    out = next(f for f in doc["files"] if f["path"] == "/w/mid.csv")
    out["schema"] = TABLE
    got = _outputs(parse(OL.serialize([doc])))["/w/mid.csv"]
    assert [(f["name"], f["type"]) for f in got["facets"]["schema"]["fields"]] == [("x", "int64"), ("label", "string")]
    assert got["outputFacets"]["outputStatistics"]["rowCount"] == 3
    out["schema"] = {"format": "csv", "error": "not UTF-8"}  # unreadable as a table: no Schema facet
    assert "schema" not in _outputs(parse(OL.serialize([doc])))["/w/mid.csv"]["facets"]


def test_cells_carry_their_own_output_bytes(store):  # noqa: F811
    doc = load(store, notebook_run(store))
    for ev in parse(OL.serialize([doc])):
        cell = ev["run"]["facets"]["provtrace"].get("cell")
        for o in ev["outputs"] if cell else []:
            names = {o["name"]} | {r["from"] for r in doc["renames"] if r["to"] == o["name"]}
            mine = sum(f["bytes_written"] or 0 for f in doc["files"]
                       if f["path"] in names and f["cell"] == cell["id"])
            assert mine > 0
            assert o["outputFacets"]["outputStatistics"]["size"] == mine


@pytest.mark.parametrize(("argv", "language", "code"), [
    (["python3", "-c", "print(1)"], "python", "print(1)"),
    (["/bin/sh", "-c", "sort a > b"], "shell", "sort a > b"),
    (["Rscript", "-e", "write.csv(1, 'o.csv')"], "R", "write.csv(1, 'o.csv')"),
])
def test_inline_code_is_a_source_code_facet(store, argv, language, code):  # noqa: F811
    doc = load(store, command_run(store))
    doc["run"]["argv"] = argv
    job = parse(OL.serialize([doc]))[0]["job"]
    assert job["facets"]["sourceCode"]["language"] == language and job["facets"]["sourceCode"]["sourceCode"] == code
    assert "sourceCodeLocation" not in job["facets"]


def test_a_script_or_notebook_is_a_source_code_location(store):  # noqa: F811
    doc = load(store, command_run(store))
    doc["run"].update(argv=["python3", "-u", "steps/clean.py", "in.csv"], cwd="/w")
    job = parse(OL.serialize([doc]))[0]["job"]
    assert job["name"] == "/w/steps/clean.py" and "sourceCode" not in job["facets"]
    assert job["facets"]["sourceCodeLocation"]["type"] == "file"
    assert job["facets"]["sourceCodeLocation"]["url"] == "file://testhost/w/steps/clean.py"
    events = parse(OL.serialize([load(store, notebook_run(store))]))
    assert {e["job"]["facets"]["sourceCodeLocation"]["path"] for e in events} == {"/w/analysis.ipynb"}
