"""OpenLineage: provtrace.run/1 documents as RunEvents, one JSON object per line.

Per run: a START event at its start and a COMPLETE (exit code 0) or FAIL
event at its end; a run with no end record (the tracer died) gets START
only, since how it ended is unknown. Per notebook cell: the same pair, with a
ParentRunFacet naming the notebook run. Datasets are data files, namespace
`file://HOST`, name the absolute path; inputs on START, inputs and outputs on
the final event. An output written under a temporary name and renamed
carries a LifecycleStateChange(RENAME) facet with the name it was written as;
a run that only renamed a file has the old name in and the final name out.
A dataset whose content the run fingerprinted carries a DatasetVersion facet
(its sha256), and a Schema facet when the fingerprint holds the columns of a
tabular file (`schema` on the document's file entry, from schema capture;
without it no Schema facet is emitted). Each output carries an
OutputStatistics facet: the bytes the run (or cell) wrote to it, and its row
count where the schema knows it. A failed run or cell carries an ErrorMessage
facet on its FAIL event (the exit status or signal, the cell's error name).
A job named after a script or notebook carries a SourceCodeLocation facet
(type `file`, its path); a command whose code is inline (`python -c CODE`,
`sh -c CODE`, `Rscript -e CODE`, ...) a SourceCode facet with that code.
Cells are child runs: a ParentRunFacet names the notebook run. Every run
carries processing_engine (provtrace and its version).

Run ids are UUIDs derived from the provtrace run id and start time
(openlineage.client.uuid.generate_static_uuid), so the same store always
exports the same events: (runId, eventType) identifies an event, so sending
one twice is harmless to a consumer. Here the events are only built and
written with the client's own Serde; export/openlineage_push.py sends them.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import ClassVar

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    lifecycle_state_change_dataset,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    source_code_job,
    source_code_location_job,
)
from openlineage.client.serde import Serde
from openlineage.client.uuid import generate_static_uuid

from .. import __version__
from .flows import flows_of, run_io

PRODUCER = f"urn:provtrace:{__version__}"
FACET_SCHEMA = "urn:provtrace:openlineage-facet:1"
EPOCH = "1970-01-01T00:00:00.000000Z"


@attr.define
class ProvtraceRunFacet(RunFacet):
    """What provtrace knows about the run that no standard facet holds."""

    id: str
    kind: str | None = attr.field(default=None)
    backend: str | None = attr.field(default=None)
    label: str | None = attr.field(default=None)
    argv: list | None = attr.field(default=None)
    cwd: str | None = attr.field(default=None)
    host: str | None = attr.field(default=None)
    user: str | None = attr.field(default=None)
    uid: int | None = attr.field(default=None)
    exitCode: int | None = attr.field(default=None)  # noqa: N815
    complete: bool | None = attr.field(default=None)
    lostEvents: int | None = attr.field(default=None)  # noqa: N815
    kernel: str | None = attr.field(default=None)
    interpreters: list | None = attr.field(default=None)
    gpus: list | None = attr.field(default=None)
    cell: dict | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA


@attr.define
class ProvtraceFileFacet(DatasetFacet):
    """The raw bytes of a non-UTF-8 path (the dataset name shows them as \\xNN)."""

    pathB64: str  # noqa: N815
    _additional_skip_redact: ClassVar[list[str]] = ["pathB64"]

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA


def events(docs: list[dict]) -> list[RunEvent]:
    out: list[RunEvent] = []
    for doc in sorted(docs, key=lambda d: ((d.get("run") or {}).get("started") or "",
                                           (d.get("run") or {}).get("id") or "")):
        out.extend(_run_events(doc))
    return out


def serialize(docs: list[dict]) -> bytes:
    return "".join(Serde.to_json(ev) + "\n" for ev in events(docs)).encode("utf-8")


def _uuid(started: str | None, *key: object) -> str:
    instant = datetime.fromisoformat(started or EPOCH)
    return str(generate_static_uuid(instant, "\0".join(str(k) for k in key).encode()))


# programs whose first argument that is not an option is the script they run
_INTERPRETERS = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|Rscript|R|julia|bash|sh|dash|zsh|node|perl|ruby)$")
# inline code: the option that takes it, per program, and the language the SourceCode facet names
_INLINE = {"-c": re.compile(r"^(python[0-9.]*|pypy[0-9.]*|bash|sh|dash|zsh)$"),
           "-e": re.compile(r"^(Rscript|R|julia|node|perl|ruby)$")}
_LANGUAGES = {"python": "python", "pypy": "python", "bash": "shell", "sh": "shell", "dash": "shell",
              "zsh": "shell", "Rscript": "R", "R": "R", "julia": "julia", "node": "javascript",
              "perl": "perl", "ruby": "ruby"}


def _script(run: dict) -> str | None:
    """The notebook, or the script an interpreter ran (absolute, from the run's folder)."""
    argv = [str(a) for a in run.get("argv") or []]
    if not argv:
        return None
    notebook = next((a for a in argv if a.endswith(".ipynb")), None)  # provtrace notebook run NB
    if notebook is not None:
        return os.path.normpath(os.path.join(str(run.get("cwd") or "/"), notebook))
    if _INTERPRETERS.match(os.path.basename(argv[0])):
        script = next((a for a in argv[1:] if not a.startswith("-")), None)
        if script is not None and "-c" not in argv[1:] and "-e" not in argv[1:]:
            return os.path.normpath(os.path.join(str(run.get("cwd") or "/"), script))
    return None


def _job_name(run: dict) -> str:
    """A name that stays the same across re-runs (issue 14): the run's label,
    else the notebook or the script an interpreter ran, else the program; never
    the whole command line, whose arguments change."""
    if run.get("label"):
        return str(run["label"])
    argv = [str(a) for a in run.get("argv") or []]
    if not argv:
        return f"run {run.get('id')}"
    return _script(run) or argv[0]


def _inline_code(argv: list) -> tuple[str, str] | None:
    """(language, code) of `python -c CODE`, `sh -c CODE`, `Rscript -e CODE`, ..."""
    argv = [str(a) for a in argv or []]
    prog = os.path.basename(argv[0]) if argv else ""
    for opt, programs in _INLINE.items():
        if programs.match(prog) and opt in argv[1:-1]:
            lang = _LANGUAGES.get(re.sub(r"[0-9.]+$", "", prog), prog)
            return lang, argv[argv.index(opt, 1) + 1]
    return None


def _job_facets(run: dict, host: str, job_type: str) -> dict:
    facets = {"jobType": job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="PROVTRACE", jobType=job_type, producer=PRODUCER)}
    script = _script(run)
    if script is not None:
        facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
            type="file", url=f"file://{host}{script}", path=script, producer=PRODUCER)
    inline = _inline_code(run.get("argv") or [])
    if inline is not None and job_type != "CELL":
        facets["sourceCode"] = source_code_job.SourceCodeJobFacet(
            language=inline[0], sourceCode=inline[1], producer=PRODUCER)
    return facets


@attr.define(frozen=True)
class _Facts:
    """What the run's document says about the files at a path."""
    sha256: dict[str, str]
    schema: dict[str, dict]
    bytes_written: dict[tuple[str, object], int]  # (path, cell or None for the whole run) -> bytes

    def written(self, path: str, cell: object = None) -> int | None:
        return self.bytes_written.get((path, cell))


def _facts(doc: dict) -> _Facts:
    """path -> sha256 and schema of the content the run fingerprinted there (a
    rename's target: what the rename put in place); bytes written per path."""
    sha, schema, written = {}, {}, {}
    for f in doc.get("files") or []:
        path = f.get("path")
        if not path:
            continue
        if f.get("sha256"):
            sha[path] = f["sha256"]
        if isinstance(f.get("schema"), dict):
            schema[path] = f["schema"]
        for key in ((path, None), (path, f.get("cell"))) if f.get("cell") is not None else ((path, None),):
            written[key] = written.get(key, 0) + int(f.get("bytes_written") or 0)
    for r in doc.get("renames") or []:
        if r.get("to") and r.get("sha256"):
            sha[r["to"]] = r["sha256"]
        if r.get("to") and isinstance(r.get("schema"), dict):
            schema[r["to"]] = r["schema"]
        if r.get("cell") is not None and r.get("to"):  # a cell's output made under a temporary name
            moved = written.get((r.get("from"), r["cell"]), 0)
            written[(r["to"], r["cell"])] = written.get((r["to"], r["cell"]), 0) + moved
    return _Facts(sha, schema, written)


def dataset_schema(schema: dict | None) -> schema_dataset.SchemaDatasetFacet | None:
    """The Schema facet of a captured schema ({"format", "columns": [{"name", "type"}],
    "rows", "sampled"}, store/schema.py); None when there is none or it is an error."""
    if not schema or schema.get("error") or not schema.get("columns"):
        return None
    fields = [schema_dataset.SchemaDatasetFacetFields(name=str(c.get("name")), type=c.get("type"),
                                                      ordinal_position=i)
              for i, c in enumerate(schema["columns"], 1)]
    return schema_dataset.SchemaDatasetFacet(fields=fields, producer=PRODUCER)


def _dataset(cls, host: str, path: str, b64: dict[str, str], facts: _Facts | None = None, **facets):
    if path in b64:
        facets["provtrace"] = ProvtraceFileFacet(pathB64=b64[path], producer=PRODUCER)
    if facts is not None and facts.sha256.get(path):
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=facts.sha256[path], producer=PRODUCER)
    schema = dataset_schema(facts.schema.get(path)) if facts is not None else None
    if schema is not None:
        facets["schema"] = schema
    return cls(namespace=f"file://{host}", name=path, facets=facets)


def _output_statistics(facts: _Facts, final: str, written: str, cell: object = None):
    """Bytes written to the output (under the name it was written as), rows where known."""
    size = facts.written(written, cell)
    rows = (facts.schema.get(final) or {}).get("rows")
    if size is None and rows is None:
        return {}
    return {"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        size=size, rowCount=rows if isinstance(rows, int) else None, fileCount=1, producer=PRODUCER)}


def _language(ctx: dict) -> str:
    names = sorted({str(i.get("name")) for i in ctx.get("interpreters") or [] if i.get("name")})
    return names[0] if len(names) == 1 else "unknown"


def _error(message: str, ctx: dict) -> error_message_run.ErrorMessageRunFacet:
    return error_message_run.ErrorMessageRunFacet(message=message, programmingLanguage=_language(ctx),
                                                  producer=PRODUCER)


def _run_events(doc: dict) -> list[RunEvent]:
    run = doc.get("run") or {}
    ctx = doc.get("context") or {}
    host = run.get("host") or ctx.get("host") or "localhost"
    fl = flows_of(doc)
    facts = _facts(doc)
    in_paths, out_pairs = run_io(fl)
    inputs = [_dataset(InputDataset, host, p, fl.b64, facts) for p in in_paths]
    outputs = [_output(host, final, written, fl.b64, facts) for final, written in out_pairs]
    job = Job(namespace=f"provtrace://{host}", name=_job_name(run),
              facets=_job_facets(run, host, str(run.get("kind") or "command").upper()))
    run_id = _uuid(run.get("started"), run.get("id"))
    facets = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__, name="provtrace", openlineageAdapterVersion=__version__, producer=PRODUCER),
        "provtrace": ProvtraceRunFacet(
            id=str(run.get("id")), kind=run.get("kind"), backend=run.get("backend"), label=run.get("label"),
            argv=run.get("argv"), cwd=run.get("cwd"), host=host, user=run.get("user"), uid=run.get("uid"),
            exitCode=run.get("exit_code"), complete=run.get("complete"), lostEvents=run.get("lost_events"),
            kernel=ctx.get("kernel"),
            interpreters=[{k: i.get(k) for k in ("name", "version", "path")} for i in ctx.get("interpreters") or []],
            gpus=[{k: g.get(k) for k in ("name", "uuid")} for g in ctx.get("gpus") or []], producer=PRODUCER)}
    ok = run.get("exit_code") in (0, None)
    error = None if ok else _error(f"exited with status {run.get('exit_code')}", ctx)
    out = _pair(run.get("started"), run.get("ended"), ok,
                Run(runId=run_id, facets=facets), job, inputs, outputs, error)
    parent = parent_run.ParentRunFacet(run=parent_run.Run(runId=run_id),
                                       job=parent_run.Job(namespace=job.namespace, name=job.name),
                                       producer=PRODUCER)
    for c in sorted(doc.get("cells") or [], key=lambda c: (c.get("started") or "", c.get("index") or 0)):
        out.extend(_cell_events(c, run, host, job, parent, fl.b64, facts, ctx))
    return out


def _output(host: str, final: str, written: str, b64: dict[str, str], facts: _Facts,
            cell: object = None) -> OutputDataset:
    facets = {}
    if final != written:
        facets["lifecycleStateChange"] = lifecycle_state_change_dataset.LifecycleStateChangeDatasetFacet(
            lifecycleStateChange=lifecycle_state_change_dataset.LifecycleStateChange.RENAME,
            previousIdentifier=lifecycle_state_change_dataset.PreviousIdentifier(
                name=written, namespace=f"file://{host}"), producer=PRODUCER)
    out = _dataset(OutputDataset, host, final, b64, facts, **facets)
    out.outputFacets = _output_statistics(facts, final, written, cell)
    return out


def _cell_events(c: dict, run: dict, host: str, job: Job, parent, b64: dict, facts: _Facts,
                 ctx: dict) -> list[RunEvent]:
    key = c.get("id") if c.get("id") is not None else f"index-{c.get('index')}"
    started = c.get("started") or run.get("started")
    cjob = Job(namespace=job.namespace, name=f"{job.name}.cell.{key}", facets=_job_facets(run, host, "CELL"))
    facets = {"parent": parent, "provtrace": ProvtraceRunFacet(
        id=str(run.get("id")), kind="cell", host=host, cell={
            k: c.get(k) for k in ("id", "index", "execution_count", "code_sha256", "status")},
        producer=PRODUCER)}
    crun = Run(runId=_uuid(started, run.get("id"), "cell", key), facets=facets)
    inputs = [_dataset(InputDataset, host, p, b64, facts) for p in sorted(c.get("reads") or [])]
    outputs = [_output(host, p, p, b64, facts, c.get("id")) for p in sorted(c.get("writes") or [])]
    ok = c.get("status") != "error"
    error = None if ok else _error(str(c.get("error_name") or c.get("end_reason") or "the cell failed"), ctx)
    return _pair(started, c.get("ended"), ok, crun, cjob, inputs, outputs, error)


def _pair(started, ended, ok, run: Run, job: Job, inputs: list, outputs: list,
          error: RunFacet | None = None) -> list[RunEvent]:
    evs = [RunEvent(eventType=RunState.START, eventTime=started or EPOCH, run=run, job=job,
                    producer=PRODUCER, inputs=inputs, outputs=[])]
    if ended:
        end_run = run if ok or error is None else Run(runId=run.runId, facets={**run.facets, "errorMessage": error})
        evs.append(RunEvent(eventType=RunState.COMPLETE if ok else RunState.FAIL, eventTime=ended,
                            run=end_run, job=job, producer=PRODUCER, inputs=inputs, outputs=outputs))
    return evs
