"""The config file: user rules that reclassify paths when records are read.

Files, in order (a later file's rules win over an earlier one's):

1. the system file, /etc/provtrace/config.toml (PROVTRACE_SYSTEM_CONFIG
   names another, so tests and packagers need not write /etc);
2. the user file, $XDG_CONFIG_HOME/provtrace/config.toml (default
   ~/.config/provtrace/config.toml), or instead the file PROVTRACE_CONFIG names.

A missing file is no error, except the one PROVTRACE_CONFIG names (a user
who names a file expects its rules to apply). `[classify]` maps globs to kinds:

    [classify]
    "/data/scratch/**" = "temp"
    "**/*.parquet" = "data"

Capture never reads this file: records keep the kind the path had when it
was stored, and query verbs show the kind a rule gives instead (see
docs/config.md). `[schema]` bounds, or turns off, the schema capture of
tabular data files (docs/stale.md):

    [schema]
    enabled = false          # default true
    max_bytes = 4194304      # read per text file (CSV/TSV, JSON lines)
    budget_s = 5.0           # for one run's files together

Other tables ([fleet], ...) are read by the code they concern; unknown
tables are left alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

from .errors import UsageError
from .model.paths import DATA, LIBRARY, SYSTEM, TEMP
from .store.schema import SchemaPolicy

SYSTEM_CONFIG = "/etc/provtrace/config.toml"
KINDS = (DATA, LIBRARY, SYSTEM, TEMP)


class ConfigError(UsageError):
    """A config file that cannot be used: the message names the file and the key."""


def config_files() -> list[str]:
    """The config files to read, in precedence order (later wins); missing ones included."""
    system = os.environ.get("PROVTRACE_SYSTEM_CONFIG") or SYSTEM_CONFIG
    user = os.environ.get("PROVTRACE_CONFIG")
    if not user:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        user = os.path.join(base, "provtrace", "config.toml")
    return [system, user]


def load(paths: list[str] | None = None) -> Config:
    """The merged config; ConfigError (one line, naming file and key) when one is bad."""
    config = Config()
    named = os.environ.get("PROVTRACE_CONFIG") if paths is None else None
    for path in config_files() if paths is None else paths:
        table = _read(path, must_exist=path == named)
        if table is not None:
            config.rules.extend(_classify_rules(path, table.get("classify", {})))
            if "schema" in table:
                config.schema = _schema_policy(path, table["schema"], config.schema)
    return config


def table(name: str, paths: list[str] | None = None) -> dict:
    """One table of the config files merged key by key (a later file's keys
    win): for code that reads its own table, such as [fleet]."""
    merged: dict = {}
    named = os.environ.get("PROVTRACE_CONFIG") if paths is None else None
    for path in config_files() if paths is None else paths:
        data = _read(path, must_exist=path == named)
        part = (data or {}).get(name, {})
        if not isinstance(part, dict):
            raise ConfigError(f"config {path}: [{name}] must be a table")
        merged.update({k: (v, path) for k, v in part.items()})
    return merged


def load_lenient(warn) -> Config:
    """The config, or an empty one after warn(message) when it is bad: for
    code that must not fail because of a config file (what capture writes)."""
    try:
        return load()
    except ConfigError as e:
        warn(f"{e}; config ignored")
        return Config()


def _read(path: str, must_exist: bool = False) -> dict | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"config {path}: no such file (named by PROVTRACE_CONFIG)") from None
        return None
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: bad TOML: {e}") from None


def _classify_rules(path: str, table) -> list[Rule]:
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: [classify] must be a table of \"glob\" = \"kind\"")
    rules = []
    for glob, kind in table.items():
        where = f"config {path}: [classify] {glob!r}"
        if isinstance(kind, dict):  # a dotted or unquoted key: "a.b" = ... parses as a table
            raise ConfigError(f"{where}: the value must be a kind string; quote a glob that "
                              f"contains dots (\"**/*.csv\" = \"data\")")
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
        try:
            rules.append(Rule(glob, kind, glob_regex(glob), path))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return rules


def _schema_policy(path: str, table, base: SchemaPolicy) -> SchemaPolicy:
    """[schema] over base: a later file changes only the keys it sets."""
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: [schema] must be a table (enabled, max_bytes, budget_s)")
    known = {"enabled": bool, "max_bytes": int, "budget_s": (int, float)}
    values = {}
    for key, value in table.items():
        where = f"config {path}: [schema] {key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key; one of {', '.join(known)}")
        if isinstance(value, bool) != (key == "enabled") or not isinstance(value, known[key]):
            raise ConfigError(f"{where}: {value!r} is not a {'boolean' if key == 'enabled' else 'number'}")
        if key != "enabled" and value <= 0:
            raise ConfigError(f"{where}: must be above 0, got {value!r}")
        values[key] = float(value) if key == "budget_s" else value
    return SchemaPolicy(**{**base.__dict__, **values})


@dataclass(frozen=True)
class Rule:
    glob: str
    kind: str
    regex: re.Pattern
    source: str


@dataclass
class Config:
    rules: list[Rule] = field(default_factory=list)
    schema: SchemaPolicy = field(default_factory=SchemaPolicy)
    _cache: dict[str, str | None] = field(default_factory=dict, repr=False)

    def kind_of(self, path: str) -> str | None:
        """The kind the last matching rule gives path, or None when no rule matches."""
        if not self.rules:
            return None
        if path not in self._cache:
            if len(self._cache) > 200_000:  # a bound on a long-lived daemon's memory
                self._cache.clear()
            self._cache[path] = next((r.kind for r in reversed(self.rules) if r.regex.fullmatch(path)), None)
        return self._cache[path]

    def effective(self, path: str, kind: str) -> str:
        """The kind to show for a path stored (or classified by default) as kind."""
        return self.kind_of(path) or kind


# ---- globs -------------------------------------------------------------------------

def glob_regex(glob: str) -> re.Pattern:
    """An anchored regex for a path glob.

    `*` matches within one path component, `?` one character of it, `[...]`
    a set (`[!...]` its complement), and a component that is exactly `**`
    any number of whole components, none included. A glob is absolute, or
    starts with `~/` (the reading user's home) or with `**/`. ValueError
    otherwise.
    """
    if glob.startswith("~/"):
        glob = os.path.expanduser("~") + glob[1:]
    if not (glob == "**" or glob.startswith(("/", "**/"))):
        raise ValueError("a glob must start with '/', '~/' or '**/'")
    parts = glob.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:.*/)?")
        else:
            out.append(_component(part) + ("" if last else "/"))
    return re.compile("".join(out), re.DOTALL)


def _component(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            while i + 1 < len(part) and part[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := _set_end(part, i)) is not None:
            body = part[i + 1:end]
            negate = body.startswith("!")
            body = (body[1:] if negate else body).replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("^"):  # a literal '^', not the regex's complement
                body = "\\" + body
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _set_end(part: str, start: int) -> int | None:
    """Index of the ']' closing the set opened at start (a ']' first in the set is literal)."""
    i = start + 1
    if i < len(part) and part[i] == "!":
        i += 1
    if i < len(part) and part[i] == "]":
        i += 1
    end = part.find("]", i)
    return None if end < 0 else end
