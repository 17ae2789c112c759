"""provtrace: system-level provenance for commands and notebooks.

Parses the command line and runs one verb through output.run_and_exit: every
TracerError becomes one line on stderr and a non-zero exit; a traceback
appears only with --debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from .errors import TracerError, UsageError
from .output import run_and_exit

EPILOG = textwrap.dedent("""\
    examples:
      provtrace doctor                      what capture is possible here, and why
      provtrace run -- make all             trace a command and its descendants
      provtrace run --json-out r.json -- python train.py
      provtrace runs                        list recorded runs
      provtrace show last --json            the last run as provtrace.run/1 JSON
      provtrace lineage results.csv         what produced results.csv, from what
      provtrace lineage data.csv --downstream
      provtrace notebook run nb.ipynb       run a notebook headlessly, attributed cell by cell
      provtrace daemon                      follow Jupyter kernels; trace users' runs (as root)
      provtrace runs --socket /run/provtrace/provtrace.sock   ask a live daemon
      provtrace stale                       runs and cells whose inputs changed since
      provtrace verify                      check the store's storage and tamper-evident chain
      provtrace head                        the chain's head, to anchor elsewhere
      provtrace tui                         browse runs, cells, files and lineage
      provtrace export last --format prov-json -o run.prov.json
      provtrace env last --format requirements.txt -o requirements.txt
      provtrace reproduce last              re-run the last run traced; exit 4 if anything differs
      provtrace ship --to postgresql://db/provtrace   copy this store to the fleet's central store
      provtrace lineage out.csv --db postgresql://db/provtrace   lineage across every host
      provtrace report last -o run.html     one self-contained HTML report, resources included
    """)


def _add_socket(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", help="ask a live daemon on this socket instead of "
                   "reading a store file (you see what your uid may see)")


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", help="store file (default: $PROVTRACE_DB, "
                   "/var/lib/provtrace/provtrace.db as root, else ~/.local/share/provtrace/provtrace.db); "
                   "runs, show, lineage, stale, diff, export and tui also take a fleet store's postgresql:// URL")


class _Skipped:
    """Stands in for the parser of a verb not on the command line: every
    add_* call is accepted and does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self


class _OneVerb:
    """The subparsers action, building only the parser of one verb (start-up:
    all of them cost ~8 ms, a twentieth of `provtrace run` through the daemon)."""

    def __init__(self, action, verb: str) -> None:
        self._action = action
        self._verb = verb
        self.built = False

    def add_parser(self, name: str, **kwargs):
        if name != self._verb:
            return _Skipped()
        self.built = True
        return self._action.add_parser(name, **kwargs)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with verb (a name on it), only that verb's parser,
    which parses that verb's command lines alike (an unknown verb: the whole one)."""
    ap = argparse.ArgumentParser(prog="provtrace", description=__doc__.splitlines()[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="verb", metavar="VERB")
    if verb is not None:
        one = _OneVerb(sub, verb)
        _add_verbs(one)
        return ap if one.built else build_parser()
    _add_verbs(sub)
    return ap


def _add_verbs(sub) -> None:
    """Adds every verb's parser to sub (argparse's subparsers action, or _OneVerb)."""

    p = sub.add_parser("doctor", help="report what capture is possible here and how to fix the rest")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-load", action="store_true", help="skip the probe compile/load check")

    p = sub.add_parser("run", help="trace CMD and every descendant",
                       epilog="example: provtrace run --label train -- python train.py")
    p.add_argument("--backend", choices=("auto", "ebpf", "ptrace"), default="auto")
    _add_db(p)
    p.add_argument("--socket", metavar="PATH",
                   help="trace through the daemon on PATH (default: the daemon at $PROVTRACE_SOCKET, else "
                        "/run/provtrace/provtrace.sock, when one is there and no --db or $PROVTRACE_DB "
                        "names a store; see docs/daemon.md)")
    p.add_argument("--json-out", metavar="FILE", help="also write the run as provtrace.run/1 JSON")
    p.add_argument("--label", metavar="TEXT")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")

    p = sub.add_parser("runs", help="list runs and sessions")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="one run, as text or provtrace.run/1 JSON")
    p.add_argument("run", metavar="RUN", help="run id, unique prefix, or 'last'")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--all-files", action="store_true", help="text: list library/system files too")
    p.add_argument("--attempts", action="store_true",
                   help="text: list failed opens too (ENOENT, EACCES: what the run tried to reach)")

    p = sub.add_parser("lineage", help="what produced PATH (upstream) or was derived from it")
    p.add_argument("path", metavar="PATH")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--upstream", dest="direction", action="store_const", const="upstream")
    g.add_argument("--downstream", dest="direction", action="store_const", const="downstream")
    p.add_argument("--depth", type=int, default=10, metavar="N")
    p.add_argument("--all-versions", action="store_true",
                   help="every version of PATH, not only the bytes on disk now")
    p.add_argument("--at", metavar="TIME", help="the version current at an ISO-8601 time")
    p.add_argument("--no-kernel-state", action="store_true",
                   help="cut the kernel-state edges from a notebook cell to the later cells of its kernel")
    p.add_argument("--format", choices=("text", "json", "dot", "svg", "png", "mermaid"), default=None,
                   metavar="FMT", help="text (default), json, dot, svg, png (through Graphviz's dot), mermaid")
    p.add_argument("--all-files", action="store_true",
                   help="walk library and system files too (by default they are counted on the process "
                        "that read them: one summary node in a picture)")
    p.add_argument("--max-nodes", type=_positive_int, default=150, metavar="N",
                   help="refuse a picture (dot, svg, png, mermaid) of more than N nodes (default 150)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write; '-' (default) is stdout")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--host-id", metavar="ID", help="with a postgresql:// store: the host PATH is on "
                   "(default: [fleet] host_id, else /etc/machine-id)")

    p = sub.add_parser("diff", help="what changed between two runs")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("export", help="a run, or the whole store, as PROV, OpenLineage, GraphML, DOT or JSON",
                       epilog="examples: provtrace export last --format prov-json -o run.prov.json\n"
                              "          provtrace export --all --format dot -o - | dot -Tsvg > store.svg\n"
                              "          provtrace export last --format openlineage --url http://marquez:5000\n"
                              "exit codes with --url/--push: 0 every event delivered, 75 some spooled "
                              "(endpoint down; the next push sends them)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", nargs="?", help="run id, unique prefix, or 'last'")
    p.add_argument("--all", action="store_true", help="every run in the store")
    p.add_argument("--format", default="prov-json", metavar="FMT",
                   choices=("prov-json", "prov-n", "prov-xml", "openlineage", "graphml", "dot", "json"),
                   help="prov-json (default), prov-n, prov-xml, openlineage, graphml, dot, json")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write; '-' is stdout")
    p.add_argument("--url", metavar="URL", help="openlineage: send the events to this HTTP endpoint "
                   "(openlineage-python's HTTP transport) instead of writing them")
    p.add_argument("--push", action="store_true", help="openlineage: send the events through the transport "
                   "openlineage.yml or OPENLINEAGE_URL / OPENLINEAGE__TRANSPORT__* configure")
    p.add_argument("--spool", metavar="FILE", help="where undelivered events wait for the next push (default: "
                   "STORE.openlineage-spool beside the store; through --socket, "
                   "~/.local/state/provtrace/openlineage.openlineage-spool)")
    p.add_argument("--data-only", action="store_true",
                   help="only data files (kinds as the config file's [classify] rules give them, "
                        "see docs/config.md) and the processes and runs that touch them")
    _add_db(p)
    _add_socket(p)

    p = sub.add_parser("env", help="an environment manifest (requirements.txt, renv.lock, julia, apt, "
                       "Dockerfile) from what a run or cell really used",
                       epilog="RUN is a run id, unique prefix or 'last'; RUN:CELL takes that cell's own "
                              "context (a cell id, prefix, or index).\n"
                              "examples: provtrace env last --format requirements.txt -o requirements.txt\n"
                              "          provtrace env last --format apt | xargs apt-get install -y\n"
                              "          provtrace env 20261207T184442-19c7fd:3 --format renv.lock\n"
                              "          provtrace env last --format julia -o env/   (Project.toml + "
                              "Manifest.toml)\n"
                              "          provtrace env last --format dockerfile -o build/Dockerfile   "
                              "(+ requirements.txt, renv.lock beside it)\n"
                              "a format the run used nothing of gives an empty manifest, a warning, and exit 0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN|CELL", help="RUN, or RUN:CELL for one notebook cell")
    p.add_argument("--format", required=True, metavar="FMT",
                   choices=("requirements.txt", "renv.lock", "julia", "apt", "dockerfile"),
                   help="requirements.txt, renv.lock, julia, apt or dockerfile")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (atomically) instead of stdout; "
                   "julia: a directory for Project.toml + Manifest.toml")
    p.add_argument("--no-hashes", action="store_true",
                   help="requirements.txt/dockerfile: plain pins, without asking PyPI for --hash lines")
    p.add_argument("--base", metavar="IMAGE", help="dockerfile: the base image (default: from the "
                   "run's os_release, e.g. debian:12)")
    _add_db(p)
    _add_socket(p)

    p = sub.add_parser("reproduce", help="re-run a run under tracing and check it gives the same results",
                       epilog="exit codes: 0 reproduced, 4 something differs (each difference is listed with "
                              "its likely cause), 2 the run cannot be re-run (the one-line error says why).\n"
                              "A command run is re-run with its argv, in its folder, with its recorded "
                              "environment; variables redacted when recorded stay unset unless --secret-env "
                              "names them. A notebook run is re-run with `notebook run` and compared cell by "
                              "cell. Outputs are rewritten in place, as when you run the command again.\n"
                              "examples: provtrace reproduce last\n"
                              "          provtrace reproduce 20261207T184442-19c7fd --tolerate '*.log' --json\n"
                              "          provtrace reproduce last --secret-env 'AWS_*'   (docs/reproduce.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run id, unique prefix, or 'last'")
    p.add_argument("--tolerate", action="append", default=[], metavar="GLOB",
                   help="an output allowed to differ (a log, a timestamp): a glob on its absolute path or "
                        "its path under the run's folder; repeatable")
    p.add_argument("--secret-env", action="append", default=[], metavar="NAME",
                   help="take this variable, redacted when recorded, from your current environment "
                        "(a glob: 'AWS_*'); repeatable")
    p.add_argument("--json", action="store_true", help="the verdict as provtrace.reproduce/1 JSON")
    p.add_argument("--backend", choices=("auto", "ebpf", "ptrace"), default="auto",
                   help="how the re-run is traced, as for `provtrace run`")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--timeout", type=int, default=600, metavar="S", help="notebook: per-cell timeout (default 600)")
    p.add_argument("--startup-timeout", type=_positive_int, default=60, metavar="S",
                   help="notebook: how long the kernel may take to answer at start (default 60)")

    p = sub.add_parser("stale", help="runs and cells whose inputs changed after they ran, and why",
                       epilog="exit status is 0 whether or not anything is stale (3 with --fail-if-stale "
                              "when something is); use --json to test")
    p.add_argument("run", metavar="RUN", nargs="?", help="run id, unique prefix, or 'last' (default: all)")
    _add_db(p)
    _add_socket(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--fail-if-stale", action="store_true", help="exit 3 when anything is stale")
    p.add_argument("--plan", action="store_true",
                   help="what to re-run, in order (producers before what they feed)")

    p = sub.add_parser("verify", help="check the store's storage and its tamper-evident chain",
                       epilog="exit codes: 0 intact, 1 chain broken, 4 storage corrupt, 5 an anchor does not "
                              "hold. examples: provtrace verify --expect-head 3fa9…@1200; "
                              "provtrace verify --anchor-log /var/log/provtrace-anchors.log")
    _add_db(p)
    p.add_argument("--expect-head", metavar="HASH[@SEQ]", action="append", default=[],
                   help="an anchor from `provtrace head` (repeatable): fail unless the chain still holds it")
    p.add_argument("--anchor-log", metavar="FILE",
                   help="check every anchor the daemon appended to FILE (--anchor-log) for this store")

    p = sub.add_parser("head", help="print the store's head (hash@sequence): an anchor to keep elsewhere",
                       epilog="example: provtrace head >> /mnt/other-host/anchors.txt")
    _add_db(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--sign-ssh", metavar="KEY", help="sign the head with this SSH private key "
                   "(ssh-keygen -Y sign, namespace provtrace-head)")

    p = sub.add_parser("report", help="one self-contained HTML report of a run or session",
                       epilog="example: provtrace report last -o run.html (no network needed to view it)")
    p.add_argument("run", metavar="RUN", help="run or session id, unique prefix, or 'last'")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="where to write the report")
    _add_db(p)

    p = sub.add_parser("daemon", help="the long-running service: kernels, cells, gRPC API",
                       epilog="example: sudo provtrace daemon --socket /run/provtrace/provtrace.sock")
    p.add_argument("--socket", metavar="PATH", help="API socket (default: $PROVTRACE_SOCKET, "
                   "/run/provtrace/provtrace.sock)")
    _add_db(p)
    p.add_argument("--backend", choices=("auto", "ebpf"), default="auto",
                   help="capture backend (the daemon traces with eBPF)")
    p.add_argument("--max-connections", type=_positive_int, default=1024, metavar="N",
                   help="connections held at once, all users together (default 1024)")
    p.add_argument("--max-connections-per-user", type=_positive_int, default=64, metavar="N",
                   help="connections one non-root uid may hold at once (default 64)")
    p.add_argument("--handshake-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="close a connection that sends nothing within S seconds (default 10)")
    p.add_argument("--anchor-log", metavar="FILE", help="append the store's head (an anchor line) to FILE "
                   "every --anchor-every seconds; keep FILE where the store's writer cannot rewrite it")
    p.add_argument("--anchor-syslog", action="store_true",
                   help="send the anchor line to syslog/journald too (facility auth, tag provtrace)")
    p.add_argument("--anchor-every", type=_positive_float, default=300.0, metavar="S",
                   help="seconds between anchors (default 300)")
    p.add_argument("--openlineage", action="store_true",
                   help="send each run's and cell's OpenLineage events through the transport openlineage.yml "
                        "or OPENLINEAGE_URL configure; undelivered ones wait in STORE.openlineage-spool")
    p.add_argument("--openlineage-url", metavar="URL", help="the same, to this HTTP endpoint")
    p.add_argument("--openlineage-every", type=_positive_float, default=30.0, metavar="S",
                   help="seconds between OpenLineage pushes (default 30)")
    p.add_argument("--idle-timeout", type=_positive_float, default=300.0, metavar="S",
                   help="close a connection whose client is silent for S seconds (default 300; "
                        "live clients answer the daemon's keepalive pings)")

    p.add_argument("--ship", metavar="URL", help="copy committed records to this central PostgreSQL store "
                   "continuously (docs/fleet.md); tracing goes on while it is away")
    p.add_argument("--host-id", metavar="ID", help="this host's id in the fleet (default: [fleet] host_id, "
                   "else /etc/machine-id)")
    p.add_argument("--ship-every", type=_positive_float, default=5.0, metavar="S",
                   help="seconds between shipping rounds (default 5)")

    p = sub.add_parser("ship", help="copy a store's committed records to the central PostgreSQL store, once",
                       epilog="example: provtrace ship --to postgresql://ship@db.example/provtrace")
    _add_db(p)
    p.add_argument("--to", required=True, metavar="URL", help="the central store (postgresql://...)")
    p.add_argument("--host-id", metavar="ID", help="this host's id (default: [fleet] host_id, else "
                   "/etc/machine-id)")
    p.add_argument("--batch", type=_positive_int, default=5000, metavar="N",
                   help="records per transaction (default 5000)")
    p.add_argument("--resend-from", type=_positive_int, metavar="SEQ",
                   help="send again from record SEQ on (the central store drops what it holds)")

    p = sub.add_parser("fleet", help="the central PostgreSQL store: migrate, status")
    fsub = p.add_subparsers(dest="fleet_verb", metavar="VERB", required=True)
    q = fsub.add_parser("migrate", help="create or upgrade the central schema at URL",
                        epilog="example: provtrace fleet migrate postgresql://provtrace@db.example/provtrace")
    q.add_argument("url", metavar="URL")
    q = fsub.add_parser("status", help="every host's central head, backlog and recorded losses "
                        "(exit 1 when any loss is recorded)")
    q.add_argument("url", metavar="URL")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("notebook", help="notebook verbs (run)")
    nsub = p.add_subparsers(dest="notebook_verb", metavar="VERB", required=True)
    q = nsub.add_parser("run", help="execute a notebook headlessly under tracing, cell by cell",
                        epilog="example: provtrace notebook run analysis.ipynb --output done.ipynb")
    q.add_argument("notebook", metavar="NB.ipynb")
    q.add_argument("--kernel", metavar="NAME", help="kernelspec name (default: the notebook's own)")
    _add_db(q)
    q.add_argument("--json-out", metavar="FILE", help="also write the run as provtrace.run/1 JSON")
    q.add_argument("--output", metavar="OUT.ipynb", help="write the executed notebook here")
    q.add_argument("--label", metavar="TEXT")
    q.add_argument("--timeout", type=int, default=600, metavar="S", help="per-cell timeout (default 600)")
    q.add_argument("--startup-timeout", type=_positive_int, default=60, metavar="S",
                   help="how long the kernel may take to answer at start (default 60)")

    p = sub.add_parser("tui", help="the terminal UI: runs, cells, processes, files, lineage, context",
                       epilog="keys: q quit, / filter, enter open, l lineage, tab next pane, escape back")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="PATH", help="store file (default: as for the other verbs), or a fleet "
                   "store's postgresql:// URL")
    g.add_argument("--socket", metavar="PATH", help="ask a live daemon on this socket instead")

    sub.add_parser("demo", help="trace a small shell pipeline and show its lineage")


def main(argv: list[str] | None = None) -> None:
    from .capture import sigstate  # noqa: PLC0415

    sigstate.remember()  # before anything here changes them: what a traced command inherits
    words = sys.argv[1:] if argv is None else argv
    verb = next((w for w in words if not w.startswith("-")), None)  # before it, only --debug or -h
    args = build_parser(verb).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="provtrace: %(levelname)s %(name)s %(message)s")
    if not args.verb:
        build_parser().print_help()
        sys.exit(2)

    def verb() -> int | None:
        from . import commands  # noqa: PLC0415

        _check_invocation(args)
        if args.verb == "tui":  # the one edge from tracer into tui, lazily (docs/architecture.md)
            from ..tui.entry import run  # noqa: PLC0415

            return run(args)
        return getattr(commands, "cmd_" + args.verb)(args)

    run_and_exit(verb, debug=args.debug)


def _check_invocation(args: argparse.Namespace) -> None:
    """What every verb relies on, checked once, each failure one line."""
    try:
        os.getcwd()  # relative paths are resolved against it; a traced command starts in it
    except FileNotFoundError:
        raise TracerError("the current directory no longer exists (deleted while you were in it); "
                          "cd to an existing directory and retry") from None
    from .model.paths import is_utf8  # noqa: PLC0415

    label = getattr(args, "label", None)
    if label is not None and not is_utf8(label):
        raise UsageError("--label is not valid UTF-8 text (it is stored and sent as UTF-8); "
                         "pass it in a UTF-8 locale")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
