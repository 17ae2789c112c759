"""Schema drift: how the columns of a tabular file changed between two versions, in words.

    drift(old, new) -> {"removed": [names], "added": [names],
                        "retyped": [{"column", "from", "to"}],
                        "format": {"from", "to"}?, "rows": {"from", "to"}?,
                        "breaking": bool, "words": [str]}

A change is *breaking* when a column a reader may have used is gone or now
holds another type: a removed or retyped column. Added columns (and a new
row count) are *compatible*. Column-level use is not traced (a process's
reads are whole files), so every reader of the old version counts as a
consumer of every column; `stale` says so by naming those readers.

A type of "null" (no value seen in the sample) is no evidence of a type,
so a column going from or to "null" is not called retyped.
"""

from __future__ import annotations

_LISTED = 5  # added columns named one by one up to this many


def _columns(schema: dict | None) -> dict[str, str] | None:
    if not isinstance(schema, dict) or not isinstance(schema.get("columns"), list):
        return None
    return {str(c.get("name")): str(c.get("type")) for c in schema["columns"] if isinstance(c, dict)}


def drift(old: dict | None, new: dict | None) -> dict | None:
    """The drift from old to new, or None when either has no readable schema."""
    a, b = _columns(old), _columns(new)
    if a is None or b is None:
        return None
    removed = [n for n in a if n not in b]
    added = [n for n in b if n not in a]
    retyped = [{"column": n, "from": a[n], "to": b[n]} for n in a
               if n in b and a[n] != b[n] and "null" not in (a[n], b[n])]
    out: dict = {"removed": removed, "added": added, "retyped": retyped}
    if old.get("format") != new.get("format"):
        out["format"] = {"from": old.get("format"), "to": new.get("format")}
    if old.get("rows") is not None and new.get("rows") is not None and old["rows"] != new["rows"]:
        out["rows"] = {"from": old["rows"], "to": new["rows"]}
    out["breaking"] = bool(removed or retyped)
    out["words"] = words(out)
    return out


def changed(d: dict | None) -> bool:
    """Whether d says the columns changed (not only the row count)."""
    return bool(d and (d["removed"] or d["added"] or d["retyped"] or d.get("format")))


def words(d: dict) -> list[str]:
    """The changes as phrases: column `price` removed, `qty` int64 → float64, 3 columns added."""
    out = []
    if d.get("format"):
        out.append(f"format {d['format']['from']} → {d['format']['to']}")
    out += [f"column `{n}` removed" for n in d["removed"]]
    out += [f"`{r['column']}` {r['from']} → {r['to']}" for r in d["retyped"]]
    added = d["added"]
    if len(added) == 1:
        out.append(f"column `{added[0]}` added")
    elif added:
        names = ", ".join(f"`{n}`" for n in added[:_LISTED]) + (", …" if len(added) > _LISTED else "")
        out.append(f"{len(added)} columns added ({names})")
    if d.get("rows"):
        out.append(f"rows {d['rows']['from']} → {d['rows']['to']}")
    return out


def summary(d: dict) -> str:
    """One line: 'breaking: column `price` removed; ...' or 'compatible: ...'."""
    kind = "breaking" if d["breaking"] else "compatible"
    return f"{kind}: {'; '.join(d['words']) or 'no column changes'}"
