"""The export dispatcher: every format renders, json is the run document, and
writing is atomic with one clear error for a bad destination."""

from __future__ import annotations

import json
import os

import pytest

from provtrace.tracer.errors import TracerError
from provtrace.tracer.export.exporter import FORMAT_NAMES, ExportError, render, write

from .test_export_flows import command_run, load, store  # noqa: F401  (store: fixture)


def test_every_contract_format_is_known():
    assert set(FORMAT_NAMES) == {"prov-json", "prov-n", "prov-xml", "openlineage", "graphml", "dot", "json"}


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_format_renders_a_run_and_nothing(store, fmt):  # noqa: F811
    doc = load(store, command_run(store))
    one = render([doc], fmt, single=True)
    assert "/w/out.csv" in one.decode("utf-8")
    assert render([doc], fmt, single=True) == one  # same input, same bytes
    render([], fmt)  # an empty store is a valid, empty export


def test_json_is_the_run_document_or_a_list(store):  # noqa: F811
    doc = load(store, command_run(store))
    assert json.loads(render([doc], "json", single=True)) == doc
    assert json.loads(render([doc], "json")) == [doc]
    assert json.loads(render([], "json")) == []


def test_unknown_format_is_a_tracer_error():
    with pytest.raises(ExportError, match="unknown export format 'yaml'.*prov-json"):
        render([], "yaml")
    assert issubclass(ExportError, TracerError)


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "out.dot"
    dest.write_text("old")
    write(b"digraph x {}\n", str(dest))
    assert dest.read_bytes() == b"digraph x {}\n"
    assert os.listdir(tmp_path) == ["out.dot"]


def test_write_errors_name_the_destination(tmp_path):
    with pytest.raises(ExportError, match="it is a directory"):
        write(b"x", str(tmp_path))
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    with pytest.raises(ExportError, match=f"cannot write export to {missing}: No such file"):
        write(b"x", str(missing))
    assert not (tmp_path / "no").exists()


def test_write_dash_is_stdout(capsysbinary):
    write(b"hello\n", "-")
    assert capsysbinary.readouterr().out == b"hello\n"
