"""What `provtrace reproduce` re-executes: a stored run turned back into a command.

A command run is re-run with its argv, in its cwd, with its environment as
stored. The store keeps that environment redacted (tracer/context/redact.py):
a variable whose value holds ``<redacted>`` cannot be restored from it. Such a
variable is left unset and named, unless the user asks for it to be taken from
their current environment (``--secret-env NAME``, a glob).

A notebook run is re-run as `provtrace notebook run` ran it: the same notebook
file, with the same kernel. A kernel session (a live kernel the daemon
followed) has no command to repeat and is refused.

Nothing here runs anything: ``plan`` checks the run can be repeated here and
says how; the CLI hands the plan to the same tracing path `provtrace run` and
`provtrace notebook run` use.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .context.redact import REDACTED
from .errors import RunNotFound, UsageError


@dataclass(frozen=True)
class Rerun:
    """How to repeat one stored run."""

    run_id: str
    kind: str  # "command" | "notebook"
    argv: list[str]
    cwd: str
    env: dict[str, str] | None  # None: the caller's own (a notebook run, or none was recorded)
    notebook: str | None = None
    kernel_name: str | None = None
    secrets_missing: list[str] = field(default_factory=list)  # redacted, left unset
    secrets_from_env: list[str] = field(default_factory=list)  # redacted, taken from the caller
    notes: list[str] = field(default_factory=list)


def plan(doc: dict, *, caller_uid: int, caller_env: Mapping[str, str],
         secret_globs: Sequence[str] = (), db: str = "the store") -> Rerun:
    """A Rerun for the provtrace.run/1 document doc, or a UsageError saying why it cannot be."""
    run = doc.get("run") or {}
    run_id = str(run.get("id"))
    _check_owner(run, caller_uid, db)
    kind = run.get("kind")
    if kind == "session":
        raise UsageError(f"run {run_id} is a Jupyter kernel session the daemon followed, not a command: "
                         "it cannot be re-run (run its notebook with `provtrace notebook run NB.ipynb`, "
                         "then compare the two with `provtrace diff`)")
    if kind == "notebook":
        return _plan_notebook(run, run_id)
    if kind != "command":
        raise UsageError(f"run {run_id} is of kind {kind!r}, which reproduce cannot re-run")
    argv = [str(a) for a in run.get("argv") or []]
    if not argv:
        raise UsageError(f"run {run_id} has no recorded command line; it cannot be re-run")
    hidden = [i for i, a in enumerate(argv) if REDACTED in a]
    if hidden:
        raise UsageError(f"run {run_id}'s command line held a secret that was redacted when it was recorded "
                         f"(argument {hidden[0]}: {argv[hidden[0]]!r}); it cannot be re-run as it ran")
    cwd = _existing_cwd(run, run_id)
    stored = (doc.get("context") or {}).get("env")
    if not isinstance(stored, dict):
        return Rerun(run_id, "command", argv, cwd, None, notes=[
            "the original run's environment was not recorded; the re-run gets yours"])
    env, missing, taken = restore_env(stored, caller_env, secret_globs)
    return Rerun(run_id, "command", argv, cwd, env, secrets_missing=missing, secrets_from_env=taken)


def restore_env(stored: Mapping[str, object], caller_env: Mapping[str, str],
                secret_globs: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(environment to run with, secret names left unset, secret names taken from caller_env).

    A redacted variable is taken from caller_env when its name matches one of
    secret_globs and caller_env has it; otherwise it is left out."""
    env: dict[str, str] = {}
    missing, taken = [], []
    for name, value in stored.items():
        value = "" if value is None else str(value)
        if REDACTED not in value:
            env[name] = value
        elif any(fnmatch.fnmatchcase(name, g) for g in secret_globs) and name in caller_env:
            env[name] = caller_env[name]
            taken.append(name)
        else:
            missing.append(name)
    return env, sorted(missing), sorted(taken)


def _check_owner(run: dict, caller_uid: int, db: str) -> None:
    """A user re-runs only their own runs: another user's is not found, as in every
    verb a daemon answers. Root sees every run, but re-running a user's command as
    root would run it with other rights (and as a user provtrace cannot switch to
    here), so that is refused by name."""
    uid = run.get("uid")
    if uid is None or uid == caller_uid:
        return
    if caller_uid != 0:
        raise RunNotFound(str(run.get("id")), db)
    raise UsageError(f"run {run.get('id')} was made by user {run.get('user') or uid} (uid {uid}); "
                     "re-running it as root would run it with other rights: run `provtrace reproduce` "
                     "as that user")


def _existing_cwd(run: dict, run_id: str) -> str:
    cwd = run.get("cwd")
    if not cwd:
        raise UsageError(f"run {run_id} has no recorded working directory; it cannot be re-run")
    if not os.path.isdir(cwd):
        raise UsageError(f"run {run_id} ran in {cwd}, which no longer exists here; recreate it "
                         "(with the run's inputs) to re-run the run")
    return cwd


def _plan_notebook(run: dict, run_id: str) -> Rerun:
    argv = [str(a) for a in run.get("argv") or []]
    path = run.get("notebook") or (argv[3] if len(argv) > 3 else None)
    if not path:
        raise UsageError(f"notebook run {run_id} does not name its notebook; it cannot be re-run")
    if not os.path.isfile(path):
        raise UsageError(f"notebook run {run_id} ran {path}, which no longer exists here; "
                         "restore it to re-run the notebook")
    return Rerun(run_id, "notebook", argv, os.path.dirname(path), None, notebook=path,
                 kernel_name=run.get("kernel_name"),
                 notes=["a notebook's kernel runs with your current environment, not the recorded one"])
