"""Workload programs, run as ``python -I bench/progs.py VERB ...`` under each tracer.

Standalone on purpose: it imports nothing from bench, so a traced run costs only
the interpreter plus the work itself. Everything is deterministic (fixed seeds).
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
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


def datawork(root: str, rows: int, n_files: int, n_execs: int) -> None:
    """Held-out data work (issue 15): what a data job does besides its kernel.

    1. build a CSV of ``rows`` sales rows, then parse it back and aggregate per store;
    2. write one small file per aggregate line, ``n_files`` in all (over 50 dirs),
       and read every one back;
    3. a shell pipeline over the CSV (tail | cut | sort | uniq -c | sort -rn > top.txt);
    4. ``n_execs`` short exec'd tools, each reading one of the small files (wc -c).
    """
    rng = random.Random(20261)
    os.makedirs(root, exist_ok=True)
    data = os.path.join(root, "sales.csv")
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["day", "store", "product", "units", "price"])
        for _ in range(rows):
            w.writerow([rng.randrange(365), rng.randrange(n_files), rng.choice("ABCDEFGH"),
                        rng.randint(1, 20), round(rng.random() * 100, 2)])
    revenue = [0.0] * n_files
    with open(data, newline="") as f:
        for rec in csv.DictReader(f):
            revenue[int(rec["store"])] += int(rec["units"]) * float(rec["price"])
    dirs = [os.path.join(root, f"s{i:02d}") for i in range(50)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    paths = [os.path.join(dirs[i % 50], f"store{i:05d}.txt") for i in range(n_files)]
    for i, path in enumerate(paths):
        with open(path, "w") as f:
            f.write(f"store,{i}\nrevenue,{revenue[i]:.2f}\n")
    total = 0.0
    for path in paths:
        with open(path) as f:
            total += float(f.read().split("revenue,")[1])
    if abs(total - sum(round(r, 2) for r in revenue)) > 0.01 * n_files:
        raise SystemExit(f"datawork: read back {total:.2f}, expected {sum(revenue):.2f}")
    subprocess.run(["/bin/sh", "-c", "tail -n +2 sales.csv | cut -d, -f3 | sort | uniq -c | sort -rn > top.txt"],
                   cwd=root, check=True)
    for i in range(n_execs):
        subprocess.run(["wc", "-c", paths[i % n_files]], stdout=subprocess.DEVNULL, check=True)


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
    elif verb == "datawork":
        datawork(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif verb == "notebook":
        notebook(args[0], args[1])
    else:
        raise SystemExit(f"progs.py: unknown verb {verb!r}; use churn, datawork or notebook")


if __name__ == "__main__":
    main(sys.argv[1:])
