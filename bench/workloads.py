"""The benchmark workloads: deterministic data in a temp dir, one command each.

Each workload follows the published suites (ACM REP'24 provenance benchmarks,
eAudit, Tetragon): small-file churn, streaming I/O, an exec loop, a Python
import storm, tar/untar, a pandas notebook, and held-out data work
(issue 15). ``setup`` is untimed and runs
once; ``command`` is what every configuration runs; ``reset`` (untimed) puts
the directory back between runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROGS = BENCH_DIR / "progs.py"

# Several dozen stdlib modules with real import-time work (no tkinter/curses:
# they are optional builds). Several fresh interpreters import them in turn.
IMPORT_STORM_MODULES = (
    "json email email.mime.text email.mime.multipart http.client http.server urllib.request "
    "xml.etree.ElementTree xml.dom.minidom sqlite3 csv decimal fractions statistics argparse "
    "logging logging.handlers asyncio concurrent.futures multiprocessing subprocess threading "
    "socket ssl hashlib hmac secrets uuid datetime calendar zoneinfo tarfile zipfile gzip bz2 "
    "lzma shutil tempfile pathlib glob inspect ast dis dataclasses enum typing unittest "
    "doctest pydoc difflib textwrap pprint pickle shelve configparser tomllib plistlib mailbox "
    "smtplib imaplib ftplib wsgiref.simple_server xmlrpc.client html.parser ipaddress "
    "selectors queue heapq bisect array struct locale gettext platform sysconfig "
    "importlib.metadata ctypes cProfile pstats timeit tracemalloc"
).split()

TAR_FULL_SOURCE = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each workload does; --quick uses the small set."""

    churn_files: int
    stream_mib: int
    exec_count: int
    import_procs: int
    notebook_rows: int
    datawork_rows: int
    datawork_files: int
    datawork_execs: int


# datawork at full size is the held-out data work of issue 15: 12,000 small files, 150 execs.
FULL = Sizes(churn_files=20_000, stream_mib=200, exec_count=300, import_procs=10,
             notebook_rows=400_000, datawork_rows=200_000, datawork_files=12_000, datawork_execs=150)
QUICK = Sizes(churn_files=5_000, stream_mib=50, exec_count=300, import_procs=4,
              notebook_rows=50_000, datawork_rows=50_000, datawork_files=3_000, datawork_execs=50)


class WorkloadError(Exception):
    """A workload could not be set up; the message names the workload and the cause."""

    def __init__(self, workload: str, reason: str):
        self.workload = workload
        self.reason = reason
        super().__init__(f"workload {workload}: {reason}")


class Workload:
    """Base: a name, a one-line description, setup/command/reset on its own directory."""

    name = ""
    title = ""
    notebook: Path | None = None  # set by workloads that provtrace runs with `notebook run`

    def __init__(self, root: Path, sizes: Sizes, python: str):
        self.dir = root / self.name
        self.sizes = sizes
        self.python = python

    def setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        raise NotImplementedError

    def reset(self) -> None:
        """Remove what a run left behind (untimed)."""

    def describe(self) -> str:
        return self.title


class Churn(Workload):
    name = "churn"
    title = "small-file churn (Postmark-like create/write/read/delete)"

    def command(self) -> list[str]:
        return [self.python, "-I", str(PROGS), "churn", str(self.dir / "t"), str(self.sizes.churn_files)]

    def reset(self) -> None:
        shutil.rmtree(self.dir / "t", ignore_errors=True)

    def describe(self) -> str:
        return f"{self.title}, {self.sizes.churn_files} files"


class Stream(Workload):
    name = "stream"
    title = "streaming write then read in 4 KiB chunks (dd)"

    def command(self) -> list[str]:
        count = self.sizes.stream_mib * 256
        script = (f"dd if=/dev/zero of=stream.bin bs=4k count={count} status=none && "
                  f"dd if=stream.bin of=/dev/null bs=4k status=none")
        return ["/bin/sh", "-c", script]

    def reset(self) -> None:
        (self.dir / "stream.bin").unlink(missing_ok=True)

    def describe(self) -> str:
        return f"{self.title}, {self.sizes.stream_mib} MiB each way"


class ExecLoop(Workload):
    name = "exec"
    title = "exec loop (fork+exec /bin/true from sh)"

    def command(self) -> list[str]:
        n = self.sizes.exec_count
        return ["/bin/sh", "-c", f'i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done']

    def describe(self) -> str:
        return f"{self.title}, {self.sizes.exec_count} times"


class ImportStorm(Workload):
    name = "imports"
    title = "Python import storm (fresh interpreters importing stdlib)"

    def setup(self) -> None:
        super().setup()
        script = "import " + ", ".join(IMPORT_STORM_MODULES) + "\n"
        (self.dir / "storm.py").write_text(script)
        # Fail at setup, not in every run, if a module is missing on this host.
        r = subprocess.run([self.python, "-I", str(self.dir / "storm.py")], capture_output=True, text=True)
        if r.returncode != 0:
            raise WorkloadError(self.name, r.stderr.strip().splitlines()[-1] if r.stderr else f"exit {r.returncode}")

    def command(self) -> list[str]:
        n = self.sizes.import_procs
        loop = f'i=0; while [ $i -lt {n} ]; do "$0" -I storm.py || exit 1; i=$((i+1)); done'
        return ["/bin/sh", "-c", loop, self.python]

    def describe(self) -> str:
        return f"{self.title}, {len(IMPORT_STORM_MODULES)} modules x {self.sizes.import_procs} processes"


class TarUntar(Workload):
    name = "tar"
    title = "tar then untar of a source tree (the stdlib)"

    def setup(self) -> None:
        super().setup()
        src = self.dir / "src"
        if src.exists():
            shutil.rmtree(src)
        shutil.copytree(TAR_FULL_SOURCE, src, ignore=shutil.ignore_patterns("site-packages", "dist-packages"),
                        symlinks=True)
        self.n_files = sum(1 for p in src.rglob("*") if p.is_file())

    def command(self) -> list[str]:
        return ["/bin/sh", "-c", "tar -cf src.tar src && mkdir -p out && tar -xf src.tar -C out"]

    def reset(self) -> None:
        (self.dir / "src.tar").unlink(missing_ok=True)
        shutil.rmtree(self.dir / "out", ignore_errors=True)

    def describe(self) -> str:
        return f"{self.title}, {getattr(self, 'n_files', '?')} files from {TAR_FULL_SOURCE}"


NOTEBOOK_CELLS = [
    "import pandas as pd, numpy as np, os",
    "df = pd.read_csv('data/sales.csv')\nstores = pd.read_csv('data/stores.csv')\nlen(df), len(stores)",
    "df['revenue'] = df['units'] * df['price']\n"
    "merged = df.merge(stores, on='store')\n"
    "by_region = merged.groupby(['region', 'product'])['revenue'].agg(['sum', 'mean', 'count'])\n"
    "by_region.head()",
    "monthly = merged.assign(month=merged['day'] // 30).pivot_table("
    "index='month', columns='region', values='revenue', aggfunc='sum')\nmonthly.describe()",
    "os.makedirs('out', exist_ok=True)\n"
    "by_region.to_csv('out/by_region.csv.tmp')\nos.replace('out/by_region.csv.tmp', 'out/by_region.csv')\n"
    "monthly.to_pickle('out/monthly.pkl')",
    "check = pd.read_csv('out/by_region.csv')\nassert len(check) == len(by_region)\nlen(check)",
]


class Notebook(Workload):
    name = "notebook"
    title = "pandas notebook executed headlessly (nbclient)"

    def setup(self) -> None:
        super().setup()
        r = subprocess.run([self.python, "-c", "import pandas, numpy, nbclient, nbformat, ipykernel"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise WorkloadError(self.name, "needs pandas, numpy, nbclient, nbformat, ipykernel: "
                                + (r.stderr.strip().splitlines()[-1] if r.stderr else f"exit {r.returncode}"))
        gen = (
            "import numpy as np, pandas as pd, os, sys\n"
            "n = int(sys.argv[1]); rng = np.random.default_rng(7)\n"
            "os.makedirs('data', exist_ok=True)\n"
            "pd.DataFrame({'day': rng.integers(0, 365, n), 'store': rng.integers(0, 200, n),\n"
            "              'product': rng.choice(list('ABCDEFGH'), n), 'units': rng.integers(1, 20, n),\n"
            "              'price': rng.random(n).round(2) * 100}).to_csv('data/sales.csv', index=False)\n"
            "pd.DataFrame({'store': range(200), 'region': [f'r{i % 7}' for i in range(200)]})"
            ".to_csv('data/stores.csv', index=False)\n"
        )
        subprocess.run([self.python, "-c", gen, str(self.sizes.notebook_rows)], cwd=self.dir, check=True)
        nb = {
            "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
                       "outputs": [], "source": src} for i, src in enumerate(NOTEBOOK_CELLS)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5,
        }
        self.notebook = self.dir / "analysis.ipynb"
        self.notebook.write_text(json.dumps(nb, indent=1))

    @property
    def executed(self) -> Path:
        return self.dir / "executed.ipynb"

    def command(self) -> list[str]:
        return [self.python, "-I", str(PROGS), "notebook", str(self.notebook), str(self.executed)]

    def reset(self) -> None:
        shutil.rmtree(self.dir / "out", ignore_errors=True)
        self.executed.unlink(missing_ok=True)

    def describe(self) -> str:
        return f"{self.title}, {self.sizes.notebook_rows} rows, {len(NOTEBOOK_CELLS)} cells"


class DataWork(Workload):
    name = "datawork"
    title = "data work (CSV build and parse, small files written and read back, a shell pipeline, execs)"

    def setup(self) -> None:
        super().setup()
        for tool in ("tail", "cut", "sort", "uniq", "wc"):
            if shutil.which(tool) is None:
                raise WorkloadError(self.name, f"{tool} not found on PATH (coreutils)")

    def command(self) -> list[str]:
        s = self.sizes
        return [self.python, "-I", str(PROGS), "datawork", str(self.dir / "t"), str(s.datawork_rows),
                str(s.datawork_files), str(s.datawork_execs)]

    def reset(self) -> None:
        shutil.rmtree(self.dir / "t", ignore_errors=True)

    def describe(self) -> str:
        s = self.sizes
        return (f"{self.title}, {s.datawork_rows:,} CSV rows, {s.datawork_files:,} files, "
                f"{s.datawork_execs} execs")


ALL = (Churn, Stream, ExecLoop, ImportStorm, TarUntar, Notebook, DataWork)
NAMES = tuple(w.name for w in ALL)


def build(names: list[str], root: Path, sizes: Sizes, python: str) -> list[Workload]:
    """Instantiate the named workloads (in canonical order) under root."""
    by_name = {w.name: w for w in ALL}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    return [by_name[n](root, sizes, python) for n in NAMES if n in names]
