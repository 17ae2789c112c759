"""ELF shared objects and executables: soname, build-id, needs, owner.

Read with pyelftools. Results are cached by ``(st_dev, st_ino, st_mtime_ns)``
of the opened file, so a library that 500 processes map is parsed once per
cache. Bad input never raises: a truncated file, a non-ELF file named
``.so``, a missing (deleted) or unreadable file each give an ``ElfInfo``
whose ``error`` says what went wrong.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from elftools.elf.sections import NoteSection

from .dpkg import DpkgIndex, package_name

log = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
# libfoo.so, libfoo.so.6, libfoo.so.1.2.3, foo.cpython-311-x86_64-linux-gnu.so
_SHARED_OBJECT_NAME = re.compile(r"\.so(\.[0-9][0-9.]*)?$")


def looks_like_shared_object(path: str) -> bool:
    return bool(_SHARED_OBJECT_NAME.search(os.path.basename(path)))


def is_regular_file(path: str) -> bool:
    """Regular files only: opening a FIFO blocks, reading a device (/dev/nvidia0) may act."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def has_elf_magic(path: str) -> bool:
    if not is_regular_file(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class ElfInfo:
    """What one ELF file says about itself; ``error`` set when it could not be read."""

    path: str
    soname: str | None = None
    build_id: str | None = None
    needed: tuple[str, ...] = ()
    symbol_versions: tuple[str, ...] = ()
    elf_type: str | None = None
    machine: str | None = None
    error: str | None = None


def _notes_build_id(elf: ELFFile) -> str | None:
    # Sections first; a stripped file may keep only the PT_NOTE segment.
    note_sources = [s for s in elf.iter_sections() if isinstance(s, NoteSection)]
    if not note_sources:
        note_sources = [g for g in elf.iter_segments() if g["p_type"] == "PT_NOTE"]
    for source in note_sources:
        for note in source.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
    return None


def _dynamic(elf: ELFFile) -> tuple[str | None, tuple[str, ...]]:
    soname = None
    needed: list[str] = []
    for section in elf.iter_sections():
        if not isinstance(section, DynamicSection):
            continue
        for tag in section.iter_tags():
            if tag.entry.d_tag == "DT_SONAME":
                soname = tag.soname
            elif tag.entry.d_tag == "DT_NEEDED":
                needed.append(tag.needed)
    return soname, tuple(needed)


def _version_needs(elf: ELFFile) -> tuple[str, ...]:
    versions: set[str] = set()
    for section in elf.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for _verneed, vernaux_iter in section.iter_versions():
                versions.update(aux.name for aux in vernaux_iter)
    return tuple(sorted(versions))


def parse_elf(path: str, stream) -> ElfInfo:
    """Parse an open binary stream; raises ELFError and friends on bad input."""
    elf = ELFFile(stream)
    soname, needed = _dynamic(elf)
    return ElfInfo(
        path=path,
        soname=soname,
        build_id=_notes_build_id(elf),
        needed=needed,
        symbol_versions=_version_needs(elf),
        elf_type=elf["e_type"],
        machine=elf["e_machine"],
    )


class ElfCache:
    """Parsed ELF files keyed by (device, inode, mtime); errors are results too."""

    def __init__(self, dpkg: DpkgIndex | None = None) -> None:
        self.dpkg = dpkg if dpkg is not None else DpkgIndex()
        self._by_identity: dict[tuple[int, int, int], ElfInfo] = {}
        self.parses = 0  # how many files were actually parsed (for tests/bench)

    def read(self, path: str, open_path: str | None = None) -> ElfInfo:
        """Info for ``path``; ``open_path`` (e.g. /proc/PID/map_files/...) is opened instead."""
        try:
            mode = os.stat(open_path or path).st_mode
            if not stat.S_ISREG(mode):
                return ElfInfo(path=path, error="not a regular file")
            f = open(open_path or path, "rb")
        except FileNotFoundError:
            return ElfInfo(path=path, error="missing: file not found (deleted?)")
        except PermissionError as e:
            return ElfInfo(path=path, error=f"unreadable: {e.strerror}")
        except OSError as e:
            return ElfInfo(path=path, error=f"unreadable: {e.strerror or e}")
        with f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_mtime_ns)
            cached = self._by_identity.get(key)
            if cached is None:
                cached = self._parse(path, f)
                self._by_identity[key] = cached
        return cached if cached.path == path else dataclasses.replace(cached, path=path)

    def _parse(self, path: str, f) -> ElfInfo:
        self.parses += 1
        try:
            if f.read(4) != ELF_MAGIC:
                return ElfInfo(path=path, error="not an ELF file (bad magic)")
            f.seek(0)
            return parse_elf(path, f)
        except (ELFError, struct.error, EOFError, ValueError) as e:
            log.debug("elf parse failed path=%s error=%s", path, e)
            return ElfInfo(path=path, error=f"malformed ELF: {e}")
        except OSError as e:
            return ElfInfo(path=path, error=f"unreadable: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 - untrusted binaries must never crash a run
            log.warning("elf parse failed unexpectedly path=%s error=%r", path, e)
            return ElfInfo(path=path, error=f"malformed ELF: {type(e).__name__}: {e}")

    def record(self, path: str, open_path: str | None = None) -> dict:
        """The contract's library entry for one path (path, soname, build_id, package...)."""
        info = self.read(path, open_path)
        owner = self.dpkg.owner(path)
        return {
            "path": path,
            "soname": info.soname,
            "build_id": info.build_id,
            "package": package_name(owner) if owner else None,
            "needed": list(info.needed),
            "symbol_versions": list(info.symbol_versions),
            "error": info.error,
        }


def libraries_for(paths: Iterable[str], cache: ElfCache | None = None) -> list[dict]:
    """Library entries for each distinct path, in first-seen order."""
    cache = cache if cache is not None else ElfCache()
    seen: set[str] = set()
    entries = []
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        entries.append(cache.record(path))
    return entries
