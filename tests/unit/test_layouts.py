"""probes/events.h and tracer/capture/layouts.py must describe the same bytes.

gcc compiles a small program against events.h that prints the size,
alignment and every member offset (nested header members included, as
`h.type`) of every struct in layouts.C_STRUCTS, plus the #defines and enum
values. The program is generated from the ctypes `_fields_`, so a member
renamed on one side fails to compile, and one added, removed, resized or
moved on either side changes an offset or a size.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provtrace.tracer.capture import layouts as L

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "probes" / "events.h"
ENUM_PREFIXES = ("EV_", "FLUSH_", "FDOP_", "NET_")
# #defines that only the probes use; any other PT_* must be mirrored in layouts.py.
KERNEL_ONLY_DEFINES: set[str] = set()
SIGNED = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


def _flat_fields(cls: type[ctypes.Structure], prefix: str = "", base: int = 0):
    """(designator, offset, size, ctype) of every member, nested structs flattened."""
    for name, ctype in cls._fields_:
        off = base + getattr(cls, name).offset
        yield prefix + name, off, ctypes.sizeof(ctype), ctype
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            yield from _flat_fields(ctype, f"{prefix}{name}.", off)


def _header_text() -> str:
    return HEADER.read_text()


def _header_defines() -> list[str]:
    return re.findall(r"^#define\s+(PT_\w+|FDIO_\w+)\s", _header_text(), re.M)


def _header_enum_members() -> list[str]:
    names = []
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\}", _header_text(), re.S):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        names += re.findall(r"\b([A-Z][A-Z0-9_]*)\s*=", body)
    return names


def _c_program() -> str:
    lines = ["#include <linux/types.h>", "#include <stddef.h>", "#include <stdio.h>",
             '#include "events.h"', "int main(void) {"]
    for cname, cls in L.C_STRUCTS.items():
        lines.append(f'  printf("size {cname} %zu %zu\\n", sizeof(struct {cname}), '
                     f"_Alignof(struct {cname}));")
        for desig, _off, _size, ctype in _flat_fields(cls):
            member = f"((struct {cname} *)0)->{desig}"
            signed = "0"
            if not (isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Array))):
                signed = f"((__typeof__({member}))-1 < 0)"
            lines.append(f'  printf("field {cname} {desig} %zu %zu %d\\n", '
                         f"offsetof(struct {cname}, {desig}), sizeof({member}), (int){signed});")
    for name in _header_defines() + _header_enum_members():
        lines.append(f'  printf("const {name} %lld\\n", (long long)({name}));')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory) -> dict:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed for the layout check (apt-get install gcc)")
    d = tmp_path_factory.mktemp("layouts")
    src, exe = d / "layouts.c", d / "layouts"
    src.write_text(_c_program())
    cc = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-I", str(HEADER.parent),
                         "-o", str(exe), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, f"events.h does not match layouts.py's member names:\n{cc.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    facts: dict = {"size": {}, "field": {}, "const": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            facts["size"][rest[0]] = (int(rest[1]), int(rest[2]))
        elif kind == "field":
            facts["field"][(rest[0], rest[1])] = tuple(int(x) for x in rest[2:])
        else:
            facts["const"][rest[0]] = int(rest[1])
    return facts


def test_every_struct_in_header_is_mirrored():
    structs = set(re.findall(r"^struct\s+(\w+)\s*\{", _header_text(), re.M))
    assert structs == set(L.C_STRUCTS)


@pytest.mark.parametrize("cname", sorted(L.C_STRUCTS))
def test_struct_size_and_alignment(c_facts, cname):
    cls = L.C_STRUCTS[cname]
    assert c_facts["size"][cname] == (ctypes.sizeof(cls), ctypes.alignment(cls)), cname


@pytest.mark.parametrize("cname", sorted(L.C_STRUCTS))
def test_member_offsets_sizes_and_signedness(c_facts, cname):
    for desig, off, size, ctype in _flat_fields(L.C_STRUCTS[cname]):
        is_scalar = not (isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Array)))
        want = (off, size, int(is_scalar and ctype in SIGNED))
        assert c_facts["field"][(cname, desig)] == want, f"struct {cname}.{desig}"


def test_header_struct_matches_event_hdr_in_every_event(c_facts):
    # the decoder reads the header with one format for every record type
    for cname, cls in L.C_STRUCTS.items():
        if cname == "event_hdr":
            continue
        assert cls._fields_[0] == ("h", L.EventHdr), cname
        assert c_facts["field"][(cname, "h")][:2] == (0, ctypes.sizeof(L.EventHdr))


def test_defines_match(c_facts):
    defines = _header_defines()
    assert defines, "no #defines found in events.h"
    for name in defines:
        if name in KERNEL_ONLY_DEFINES:
            continue
        assert hasattr(L, name), f"{name} is defined in events.h but not in layouts.py"
        assert getattr(L, name) == c_facts["const"][name], name
    py_only = {n for n in dir(L) if n.startswith(("PT_", "FDIO_"))} - set(defines)
    assert not py_only, f"layouts.py defines constants events.h lacks: {py_only}"


def test_enum_values_match(c_facts):
    members = [m for m in _header_enum_members() if m.startswith(ENUM_PREFIXES)]
    assert len(members) >= 12 + 5 + 4 + 3
    for name in members:
        assert hasattr(L, name), f"enum {name} in events.h has no mirror in layouts.py"
        assert getattr(L, name) == c_facts["const"][name], name
    py_only = {n for n in dir(L) if n.startswith(ENUM_PREFIXES)} - set(members)
    assert not py_only, f"layouts.py has enum values events.h lacks: {py_only}"


def test_lost_reasons_match(c_facts):
    assert len(L.LOST_REASONS) == c_facts["const"]["LOST_NREASONS"]
    for i, name in enumerate(("LOST_RINGBUF", "LOST_AGG", "LOST_COMPAT", "LOST_TRACED")):
        assert c_facts["const"][name] == i


@pytest.mark.parametrize("cname", sorted(L.C_STRUCTS))
def test_prefix_covers_every_scalar(cname):
    """prefix_of (the decoder's struct format) agrees with the ctypes offsets."""
    cls = L.C_STRUCTS[cname]
    p = L.prefix_of(cls)
    scalars = [(d, o) for d, o, _s, t in _flat_fields(cls) if t in (ctypes.c_uint32, ctypes.c_int32,
                                                                      ctypes.c_uint64, ctypes.c_int64)]
    assert p.names == tuple(d.split(".")[-1] for d, _ in scalars)
    tails = {d: o for d, o, _s, t in _flat_fields(cls) if isinstance(t, type) and issubclass(t, ctypes.Array)}
    assert p.tail_offsets == tails
    if not tails:
        assert p.fmt.size == ctypes.sizeof(cls)
    else:
        assert p.fmt.size == min(tails.values())
    # values land where ctypes puts them
    obj = cls()
    for i, (desig, _o) in enumerate(scalars):
        target, *rest = desig.split(".")
        holder = getattr(obj, target) if rest else obj
        setattr(holder, rest[0] if rest else target, i + 1)
    assert p.fmt.unpack_from(bytes(obj)) == tuple(range(1, len(scalars) + 1))
