"""`export --data-only`: a run document cut down to its data files.

The cut is made on provtrace.run/1 documents, before any exporter sees them,
so every format leaves out the same things. Kinds are the documents' own:
load_run has already applied the config file's [classify] rules.

Kept: files of kind data; temp files renamed into a data name (the name an
atomic write went through, without which the final file would have no
writer); the renames, processes, pipes and network entries of the processes
that touched a kept file; cells. Left out: every other file, and the context's
libraries and packages. A run that touched no data file is left out of
--all.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model.paths import DATA, TEMP


def data_only(docs: list[dict], kind_of: Callable[[str], str], *, keep_empty: bool = False) -> list[dict]:
    """docs, each cut to its data; runs without data dropped unless keep_empty.

    kind_of(path): the kind of a name no file entry describes (a rename's
    target), as the documents' kinds were decided (config rules, else default)."""
    out = [_cut(doc, kind_of) for doc in docs]
    return out if keep_empty else [d for d in out if d["files"]]


def _cut(doc: dict, kind_of: Callable[[str], str]) -> dict:
    renames = doc.get("renames") or []
    kinds = {f["path"]: f.get("kind") for f in doc.get("files") or []}
    data = {p for p, kind in kinds.items() if kind == DATA}
    data |= {r["to"] for r in renames if r["to"] not in kinds and kind_of(r["to"]) == DATA}
    bridges = _renamed_into(data, renames) - data
    files = [f for f in doc.get("files") or []
             if f.get("kind") == DATA or (f.get("kind") == TEMP and f["path"] in bridges)]
    kept = data | bridges
    pids = {f["pid"] for f in files}
    renames = [r for r in renames if r["from"] in kept or r["to"] in kept]
    pids |= {r["pid"] for r in renames}
    context = {k: v for k, v in (doc.get("context") or {}).items() if k not in ("libraries", "packages")}
    return {**doc, "files": files, "renames": renames, "context": context,
            "processes": [p for p in doc.get("processes") or [] if p["pid"] in pids],
            "network": [n for n in doc.get("network") or [] if n.get("pid") in pids],
            "pipes": [p for p in (_pipe(p, pids) for p in doc.get("pipes") or []) if p is not None]}


def _renamed_into(data: set[str], renames: list[dict]) -> set[str]:
    """Names that reach a data name through one rename or a chain of them."""
    reached: set[str] = set()
    targets = set(data)
    grew = True
    while grew:
        grew = False
        for r in renames:
            if r["to"] in targets and r["from"] not in targets:
                targets.add(r["from"])
                reached.add(r["from"])
                grew = True
    return reached


def _pipe(pipe: dict, pids: set[int]) -> dict | None:
    writers = [p for p in pipe.get("writers") or [] if p in pids]
    readers = [p for p in pipe.get("readers") or [] if p in pids]
    return {**pipe, "writers": writers, "readers": readers} if writers and readers else None
