"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The kernel headers installed on this machine (Debian's 6.1) do not match the
running kernel, so no probe may take a struct offset from them. The probes
receive every offset they need as a -D define computed here.

BTF layout (include/uapi/linux/btf.h): a header, then a type section of
variable-length records, then a string section. Type ids start at 1.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..errors import BTFError

log = logging.getLogger(__name__)

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# kind -> size of the extra data after the 12-byte btf_type, per vlen item or fixed
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_VLEN = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
             KIND_DATASEC: 12, KIND_ENUM64: 12}
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)

# What the probes need: (struct, member path). Dotted paths descend into
# embedded structs, e.g. file.f_path.dentry.
WANTED: dict[str, tuple[str, str]] = {
    "TASK_TGID": ("task_struct", "tgid"),
    "TASK_PID": ("task_struct", "pid"),
    "TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "TASK_FILES": ("task_struct", "files"),
    "FILES_FDT": ("files_struct", "fdt"),
    "FDT_MAX_FDS": ("fdtable", "max_fds"),
    "FDT_FD": ("fdtable", "fd"),
    "FILE_F_MODE": ("file", "f_mode"),
    "FILE_F_INODE": ("file", "f_inode"),
    "INODE_I_INO": ("inode", "i_ino"),
    "INODE_I_MODE": ("inode", "i_mode"),
    "INODE_I_SB": ("inode", "i_sb"),
    "SB_S_DEV": ("super_block", "s_dev"),
    "TASK_TI_STATUS": ("task_struct", "thread_info.status"),  # TS_COMPAT: ia32 syscall
    "BPRM_FILENAME": ("linux_binprm", "filename"),
    # argv of a new image: mm->arg_start..arg_end (read at sched_process_exec)
    "TASK_MM": ("task_struct", "mm"),
    # the credentials of a new image: did exec gain privileges?
    "TASK_CRED": ("task_struct", "cred"),
    # whole-process exit where sched_process_exit has no group_dead argument
    "TASK_SIGNAL": ("task_struct", "signal"),
    "SIGNAL_LIVE": ("signal_struct", "live"),
    # resource accounting at exit (utime/stime in ns, maxrss in pages, io bytes)
    "TASK_UTIME": ("task_struct", "utime"),
    "TASK_STIME": ("task_struct", "stime"),
    "TASK_IOAC_RCHAR": ("task_struct", "ioac.rchar"),
    "TASK_IOAC_WCHAR": ("task_struct", "ioac.wchar"),
    "SIGNAL_UTIME": ("signal_struct", "utime"),
    "SIGNAL_STIME": ("signal_struct", "stime"),
    "SIGNAL_MAXRSS": ("signal_struct", "maxrss"),
    "SIGNAL_IOAC_RCHAR": ("signal_struct", "ioac.rchar"),
    "SIGNAL_IOAC_WCHAR": ("signal_struct", "ioac.wchar"),
    "CRED_UID": ("cred", "uid"),
    "CRED_GID": ("cred", "gid"),
    "CRED_EUID": ("cred", "euid"),
    "CRED_EGID": ("cred", "egid"),
    "CRED_CAP_EFFECTIVE": ("cred", "cap_effective"),
    "MM_HIWATER_RSS": ("mm_struct", "hiwater_rss"),
    "MM_RSS_STAT": ("mm_struct", "rss_stat"),
    "MM_ARG_START": ("mm_struct", "arg_start"),
    "MM_ARG_END": ("mm_struct", "arg_end"),
    # x86_64 syscall arguments in the saved user registers, and the number
    "REGS_DI": ("pt_regs", "di"),
    "REGS_SI": ("pt_regs", "si"),
    "REGS_DX": ("pt_regs", "dx"),
    "REGS_R10": ("pt_regs", "r10"),
    "REGS_R8": ("pt_regs", "r8"),
    "REGS_ORIG_AX": ("pt_regs", "orig_ax"),
    # the path an open really reached, walked up from its dentry (EV_RESOLVED)
    "FILE_F_PATH_DENTRY": ("file", "f_path.dentry"),
    "FILE_F_PATH_MNT": ("file", "f_path.mnt"),
    "DENTRY_D_PARENT": ("dentry", "d_parent"),
    "DENTRY_D_NAME_NAME": ("dentry", "d_name.name"),
    "DENTRY_D_NAME_LEN": ("dentry", "d_name.len"),
    "VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "MOUNT_MNT": ("mount", "mnt"),
    "MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "TASK_FS": ("task_struct", "fs"),
    "FS_ROOT_DENTRY": ("fs_struct", "root.dentry"),
    "FS_ROOT_MNT": ("fs_struct", "root.mnt"),
    "FS_PWD_DENTRY": ("fs_struct", "pwd.dentry"),
    # the user code segment: a 32-bit image runs with __USER32_CS
    "REGS_CS": ("pt_regs", "cs"),
}


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int
    members: tuple[Member, ...] = ()
    elem_type: int = 0  # KIND_ARRAY: the element's type id


class Btf:
    """A parsed BTF blob: types by id, and named structs/unions by name."""

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        if len(data) < 24:
            raise BTFError("file too short to hold a BTF header", source)
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad magic 0x{magic:x}", source)
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]  # id 0 is void
        self.by_name: dict[str, int] = {}
        self._parse(data, hdr_len + type_off, hdr_len + type_off + type_len)

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode("utf-8", "replace")

    def _parse(self, data: bytes, pos: int, end: int) -> None:
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, size_or_type = unpack("<III", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            members: tuple[Member, ...] = ()
            if kind in (KIND_STRUCT, KIND_UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = unpack("<III", data, pos + 12 * i)
                    bit_off = m_off & 0xFFFFFF if kind_flag else m_off
                    ms.append(Member(self._str(m_name), m_type, bit_off))
                members = tuple(ms)
            elem = unpack("<I", data, pos)[0] if kind == KIND_ARRAY else 0
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
            name = self._str(name_off) if name_off else ""
            self.types.append(BtfType(kind, name, size_or_type, members, elem))
            if name and kind in (KIND_STRUCT, KIND_UNION) and members:
                # First complete definition wins; vmlinux has one per name.
                self.by_name.setdefault(name, len(self.types) - 1)

    def resolve(self, type_id: int) -> BtfType | None:
        """Follow typedef/const/volatile chains to the underlying type."""
        t = self.types[type_id]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        return t

    def _find(self, type_id: int, name: str) -> int | None:
        """Bit offset of member `name` in a struct, looking into anonymous members."""
        t = self.resolve(type_id)
        if t is None or t.kind not in (KIND_STRUCT, KIND_UNION):
            return None
        for m in t.members:
            if m.name == name:
                return m.bit_offset
            if not m.name:
                inner = self._find(m.type_id, name)
                if inner is not None:
                    return m.bit_offset + inner
        return None

    def member_type(self, type_id: int, name: str) -> int | None:
        t = self.resolve(type_id)
        if t is None:
            return None
        for m in t.members:
            if m.name == name:
                return m.type_id
            if not m.name:
                inner = self.member_type(m.type_id, name)
                if inner is not None:
                    return inner
        return None

    def offset_of(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted) member path in a named struct."""
        tid = self.by_name.get(struct_name)
        if tid is None:
            raise BTFError(f"no struct {struct_name}", self.source)
        total_bits = 0
        for part in path.split("."):
            bits = self._find(tid, part)
            if bits is None:
                raise BTFError(f"struct {struct_name} has no member {path}", self.source)
            total_bits += bits
            nxt = self.member_type(tid, part)
            tid = nxt if nxt is not None else tid
        if total_bits % 8:
            raise BTFError(f"{struct_name}.{path} is a bitfield", self.source)
        return total_bits // 8


def offsets_of(parsed: Btf, wanted: dict[str, tuple[str, str]],
               optional: frozenset[str] = frozenset()) -> dict[str, int]:
    """Offsets of every wanted member; BTFError names all that are missing
    (renamed or moved between kernels), not only the first. An `optional`
    one the kernel lacks is left out (its figure is not read)."""
    offsets, missing = {}, []
    for name, (struct_name, member) in wanted.items():
        try:
            offsets[name] = parsed.offset_of(struct_name, member)
        except BTFError as e:
            if name in optional:
                log.info("btf offset missing name=%s: that resource figure is not read", name)
            else:
                missing.append(f"{struct_name}.{member} ({e.what})")
    if missing:
        raise BTFError("lacks " + ", ".join(missing) + ": renamed or moved in this kernel, "
                       "and the eBPF probes read them", parsed.source, fields=missing)
    return offsets


def rss_layout(btf: Btf) -> dict[str, int]:
    """How to read mm_struct's per-kind RSS counters: the stride between them
    and the offset of the page count in each (RSS_STRIDE, RSS_COUNT).

    6.2 and later keep `struct percpu_counter rss_stat[NR_MM_COUNTERS]` (the
    count is `.count`, exact up to the per-CPU deltas not yet folded in);
    older kernels `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }`.
    """
    tid = btf.member_type(btf.by_name["mm_struct"], "rss_stat")
    t = btf.resolve(tid) if tid is not None else None
    if t is not None and t.kind == KIND_ARRAY:
        elem = btf.resolve(t.elem_type)
        if elem is not None and elem.kind == KIND_STRUCT:
            return {"RSS_STRIDE": elem.size_or_type, "RSS_COUNT": btf.offset_of(elem.name, "count")}
    if t is not None and t.kind == KIND_STRUCT:
        return {"RSS_STRIDE": 8, "RSS_COUNT": btf.offset_of(t.name, "count")}
    raise BTFError("mm_struct.rss_stat has a layout this version does not know", btf.source)


# offsets that are not one member's (rss_layout)
DERIVED = ("RSS_STRIDE", "RSS_COUNT")
# What a kernel may lack without the probes losing anything but resource
# figures: ioac.rchar/wchar need CONFIG_TASK_XACCT. The probe reads a figure
# only where its OFF_* is defined (process.bpf.c).
OPTIONAL = frozenset({"TASK_IOAC_RCHAR", "TASK_IOAC_WCHAR", "SIGNAL_IOAC_RCHAR", "SIGNAL_IOAC_WCHAR",
                      "TASK_UTIME", "TASK_STIME", "SIGNAL_UTIME", "SIGNAL_STIME", "SIGNAL_MAXRSS",
                      "MM_HIWATER_RSS", "MM_RSS_STAT", "RSS_STRIDE", "RSS_COUNT"})


def _offsets(btf: Btf) -> dict[str, int]:
    """WANTED and DERIVED from btf; an OPTIONAL one this kernel lacks is left out."""
    out = offsets_of(btf, WANTED, OPTIONAL)
    try:
        out.update(rss_layout(btf))
    except (BTFError, KeyError) as e:
        log.info("btf rss layout unknown err=%s: peak RSS falls back to signal->maxrss", e)
    return out


def kernel_offsets(btf_path: str = VMLINUX_BTF, cache_dir: str | None = None) -> dict[str, int]:
    """Offsets for WANTED, cached per kernel (the parse takes ~0.5 s)."""
    try:
        st = os.stat(btf_path)
    except OSError as e:
        raise BTFError(f"cannot read: {e.strerror}; the kernel needs CONFIG_DEBUG_INFO_BTF=y", btf_path) from e
    key = f"{os.uname().release}-{st.st_size}-{int(st.st_mtime)}"
    cache = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "provtrace" / "btf-offsets.json"
    try:
        cached = json.loads(_read_own_file(cache))
        if cached.get("key") == key and cached.get("names") == sorted({*WANTED, *DERIVED}):
            return dict(cached["offsets"])
    except (OSError, ValueError, KeyError):
        pass
    offsets = _offsets(Btf(Path(btf_path).read_bytes(), btf_path))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(cache), json.dumps({"key": key, "names": sorted({*WANTED, *DERIVED}),
                                             "offsets": offsets}).encode())
    except OSError as e:
        log.debug("btf cache not written path=%s err=%s", cache, e)
    return offsets


def _read_own_file(path: Path) -> bytes:
    """The cache's bytes, if it is a regular file of ours that nobody else may write.

    Root may be run with a user's HOME (sudo keeps it on some systems): the
    offsets steer what the probes read, so another user's file is not trusted.
    Raises OSError otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(f"{path} is not a private file of uid {os.geteuid()}; ignored")
        return f.read(1 << 20)
