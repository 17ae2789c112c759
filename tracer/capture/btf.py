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
    "CRED_UID": ("cred", "uid"),
    "CRED_GID": ("cred", "gid"),
    "CRED_EUID": ("cred", "euid"),
    "CRED_EGID": ("cred", "egid"),
    "CRED_CAP_EFFECTIVE": ("cred", "cap_effective"),
    "MM_ARG_START": ("mm_struct", "arg_start"),
    "MM_ARG_END": ("mm_struct", "arg_end"),
    # x86_64 syscall arguments in the saved user registers, and the number
    "REGS_DI": ("pt_regs", "di"),
    "REGS_SI": ("pt_regs", "si"),
    "REGS_DX": ("pt_regs", "dx"),
    "REGS_R10": ("pt_regs", "r10"),
    "REGS_R8": ("pt_regs", "r8"),
    "REGS_ORIG_AX": ("pt_regs", "orig_ax"),
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
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
            name = self._str(name_off) if name_off else ""
            self.types.append(BtfType(kind, name, size_or_type, members))
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
        if cached.get("key") == key and set(cached["offsets"]) == set(WANTED):
            return dict(cached["offsets"])
    except (OSError, ValueError, KeyError):
        pass
    btf = Btf(Path(btf_path).read_bytes(), btf_path)
    offsets = {name: btf.offset_of(s, m) for name, (s, m) in WANTED.items()}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(cache), json.dumps({"key": key, "offsets": offsets}).encode())
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
