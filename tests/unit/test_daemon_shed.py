"""Which mappings the daemon gives back after compiling its probes: the
executable code of LLVM and clang only, never data (relocated data is the
process's own; dropping it would lose it). Real /proc/PID/maps lines."""

from __future__ import annotations

from provtrace.tracer.daemon.main import _compiler_code_mappings

MAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0000100000-7f0003000000 r-xp 00100000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0003000000-7f0003800000 r--p 03000000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0003800000-7f0003900000 rw-p 03800000 fe:00 1 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f0004000000-7f0005000000 r-xp 00200000 fe:00 2 /usr/lib/llvm-14/lib/libclang-cpp.so.14
7f0006000000-7f0006100000 r-xp 00010000 fe:00 3 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f0007000000-7f0007100000 r-xp 00010000 fe:00 4 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0008000000-7f0008100000 rw-p 00000000 00:00 0
7f0009000000-7f0009100000 r-xp 00000000 fe:00 5 /opt/libLLVM-14.so.1 (deleted)
"""


def test_only_llvm_and_clang_code_is_shed(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    # a library upgraded (deleted) while mapped is still read back from its inode
    assert _compiler_code_mappings(str(maps)) == [(0x7f0000100000, 0x7f0003000000),
                                                   (0x7f0004000000, 0x7f0005000000),
                                                   (0x7f0009000000, 0x7f0009100000)]


def test_an_unreadable_maps_file_sheds_nothing(tmp_path):
    assert _compiler_code_mappings(str(tmp_path / "missing")) == []
