"""Workload programs, run as ``python -I bench/progs.py VERB ...`` under each tracer.

Standalone on purpose: it imports nothing from bench, so a traced run costs only
the interpreter plus the work itself. Everything is deterministic (fixed seeds).
"""

from __future__ import annotations

import os
import random
import sys


def churn(root: str, n_files: int) -> None:
    """Postmark-like small-file churn: create+write, read back, delete n_files files.

    Sizes are 512 B to 16 KiB from a fixed seed; files spread over 100 directories.
    """
    rng = random.Random(20241)
    sizes = [rng.randint(512, 16384) for _ in range(n_files)]
    block = bytes(range(256)) * 64
    dirs = [os.path.join(root, f"d{i:02d}") for i in range(100)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    paths = [os.path.join(dirs[i % 100], f"f{i:06d}") for i in range(n_files)]
    for path, size in zip(paths, sizes):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, block[:size])
        os.close(fd)
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        total += len(os.read(fd, 16384))
        os.close(fd)
    for path in paths:
        os.unlink(path)
    for d in dirs:
        os.rmdir(d)
    if total != sum(sizes):
        raise SystemExit(f"churn: read back {total} bytes, expected {sum(sizes)}")


def notebook(nb_path: str, out_path: str) -> None:
    """Execute a notebook headlessly with nbclient, as Jupyter would (cwd = its folder)."""
    import nbclient
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    folder = os.path.dirname(os.path.abspath(nb_path))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": folder}})
    client.execute()
    nbformat.write(nb, out_path)


def main(argv: list[str]) -> None:
    verb, args = argv[0], argv[1:]
    if verb == "churn":
        churn(args[0], int(args[1]))
    elif verb == "notebook":
        notebook(args[0], args[1])
    else:
        raise SystemExit(f"progs.py: unknown verb {verb!r}; use churn or notebook")


if __name__ == "__main__":
    main(sys.argv[1:])
