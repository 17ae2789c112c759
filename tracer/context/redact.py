"""Redaction of secrets in environment variables and argv.

A leak is a security bug, so the rules over-redact rather than under-redact.
The marker is ``<redacted>``; a redacted entry keeps its name.

Environment variables (names compared case-insensitively):

1. Secret names: the whole value becomes ``<redacted>`` when the name
   contains ``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASSWD``, ``PASSPHRASE``,
   ``KEY``, ``CRED`` (``CREDENTIALS``, ``CREDS``), ``PRIVATE``, ``AUTH`` (but
   not ``AUTHOR``, so ``GIT_AUTHOR_NAME`` is kept; ``AUTHORIZATION`` is
   redacted), ``COOKIE``, ``SESSID``, ``SESSION`` or ``WEBHOOK``;
   starts with ``AWS_``; or ends with ``PASS``, ``_PWD`` or ``_PW`` (or is
   ``PW``) (``PGPASS``, ``MYSQL_PWD``, ``DB_PW``; plain ``PWD``, the working
   directory, is kept).
2. Any other value keeps its text, but secrets inside it are cut out:
   - URL userinfo: ``scheme://user:pw@host`` -> ``scheme://user:<redacted>@host``;
     a userinfo without a colon is often a bare token
     (``https://ghp_x@github.com``) and becomes ``scheme://<redacted>@host``;
   - URL query parameters whose name is a secret name (rule 1) or ``sig`` /
     ``*signature`` (``?access_token=x``, ``X-Amz-Signature=x``) keep the
     name and lose the value;
   - ``Bearer X`` / ``Basic X`` / ``Digest X`` credentials (HTTP headers),
     where X is 8 or more token characters, and anything after an
     ``Authorization:`` header name;
   - webhook URLs, whose secret is their path: everything after a
     ``*hooks.HOST/`` or a ``/webhook(s)/`` segment (Slack, Discord, Teams,
     Zapier, …);
   - inside free text such as ``sh -c "..."`` strings: a flag named like a
     secret (or ``-P``/``--pw``) and its value, after ``=`` or spaces;
     ``-u``/``--user user:pw`` keeps the user; ``password:X`` and
     ``DB_PASSWORD=X`` key-value pairs;
   - well-known token shapes: GitHub ``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_``,
     GitLab ``glpat-``, Slack ``xox?-``, AWS access key ids ``AKIA...``/``ASIA...``,
     ``sk-...`` API keys, and PEM private-key blocks.
3. Non-UTF-8 values (bytes, or str carrying surrogate escapes as from
   ``os.environ``) are decoded once, invalid bytes as ``\\xNN`` escapes, and
   then get the same rules. Names are decoded the same way.

argv (the first entry, the program, is kept as is apart from rule 2):

- ``--NAME=value`` and ``-NAME=value`` where NAME is a secret name (or
  ``pw``, ``pwd``, ``pass``, ``P``) -> value redacted;
- ``--NAME value`` (a flag that is a secret name, no ``=``) -> the next entry
  is redacted. ``--password``, ``--token``, ``--api-key``, ``--secret`` ...;
- ``NAME=value`` (as passed to ``env`` or make) follows the environment rule;
- program-specific short flags: ``mysql``/``mariadb``/``mysqldump``
  ``-pSECRET``; ``sshpass -p SECRET``; ``curl``/``wget`` ``-u``/``--user
  user:pw`` keeps the user. A bare ``-p`` is NOT treated as a password in
  general: it means port, parents or profile in most tools;
- every entry also gets rule 2 (URLs, headers, token shapes).

Over-redaction is accepted: ``--api-key --verbose`` loses ``--verbose``;
``KEYBOARD=x`` is redacted. Known limits: a secret passed positionally with
no telltale flag, name or shape (``mytool hunter2``) cannot be recognised; a
URL password holding a raw ``/``, ``?``, ``#`` or space (invalid in a URL) is
cut at that character; values read from files are not looked at.
The same rules are written up for users in docs/redaction.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|CRED|PRIVATE|AUTH(?!OR(?!IZ))|COOKIE|SESSID|SESSION"
    r"|WEBHOOK|^AWS_|PASS$|_PWD$|(?:^|_)PW$",
    re.IGNORECASE,
)
# Flags that take a password under short names in common tools (sshpass -P
# prompt aside, `-P X` is a password for redis-cli and many CLIs, and `--pw`
# is common). Over-redaction (scp's -P port) is accepted.
_SECRET_SHORT_FLAGS = {"P", "pw", "pwd", "pass"}
# `password:X` / `token: X` / `DB_PASSWORD=X` as a key-value pair in free text
_SECRET_PAIR = re.compile(
    r"(?<![\w./-])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<sep>\s*:\s*|=)(?P<value>[^\s,;'\"&|]+)")
# Inside a shell string (`sh -c "... --password=X ..."`): a flag that is a
# secret name, then its value (after = or spaces), quoted or not.
_TEXT_FLAG = re.compile(
    r"(?<![\w-])(?P<flag>--?(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*))(?P<sep>=|\s+)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"';|&]+)")
# Webhook URLs carry their secret in the path: cut everything after the hook part.
_WEBHOOK = re.compile(
    r"(?P<keep>https?://(?:[^\s/]*hooks?\.[^\s/]+/|[^\s/]+/(?:[^\s/?#]+/)*?(?:api/)?web-?hooks?/))"
    r"(?P<secret>[^\s?#'\"]+)", re.IGNORECASE)
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:?#]*)(?P<pw>:[^\s/?#]*)?@"
)
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&#\s?;]+)=(?P<value>[^&#\s;]*)")
_AUTH_HEADER = re.compile(
    r"\b(?P<header>(?:Proxy-)?Authorization\s*[:=]\s*)(?:(?P<scheme>[A-Za-z]+)\s+)?(?P<cred>[^\s\"',]+)",
    re.IGNORECASE,
)
# HTTP credentials: the scheme, then a token68-like value of 8+ characters
# (so prose such as "basic usage" is left alone).
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic|Digest)\s+(?P<cred>[A-Za-z0-9._~+/=\-]{8,})",
                          re.IGNORECASE)
_TOKEN_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}|sk-[A-Za-z0-9_\-]{20,})"
)
_PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
)
_FLAG = re.compile(r"^(?P<dashes>--?)(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?P<eq>=)?(?P<value>.*)$",
                   re.DOTALL)
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<value>.*)$", re.DOTALL)
_MYSQL_PROGRAMS = {"mysql", "mariadb", "mysqldump", "mysqladmin", "mariadb-dump"}
_USERPASS_PROGRAMS = {"curl", "wget"}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def to_text(value: str | bytes) -> str:
    """Decode once: invalid UTF-8 (bytes or surrogate escapes) becomes ``\\xNN``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        raw = value.encode("utf-8", errors="surrogateescape")
        return raw.decode("utf-8", errors="backslashreplace")


def _userinfo(m: re.Match) -> str:
    if m.group("pw") is None:
        return f"{m.group('scheme')}{REDACTED}@" if m.group("user") else m.group(0)
    return f"{m.group('scheme')}{m.group('user')}:{REDACTED}@"


def _query(m: re.Match) -> str:
    name = m.group("name")
    if is_secret_name(name) or name.lower() == "sig" or name.lower().endswith("signature"):
        return f"{m.group('sep')}{name}={REDACTED}"
    return m.group(0)


def _auth_header(m: re.Match) -> str:
    scheme = f"{m.group('scheme')} " if m.group("scheme") else ""
    return f"{m.group('header')}{scheme}{REDACTED}"


def _text_flag(m: re.Match) -> str:
    name = m.group("name")
    value = m.group("value")
    if name in ("u", "user") and ":" in value.strip("'\""):
        user = value.strip("'\"").partition(":")[0]
        return f"{m.group('flag')}{m.group('sep')}{user}:{REDACTED}"
    if is_secret_name(name) or name in _SECRET_SHORT_FLAGS:
        return f"{m.group('flag')}{m.group('sep')}{REDACTED}"
    return m.group(0)


def _secret_pair(m: re.Match) -> str:
    value = m.group("value")
    if (is_secret_name(m.group("name")) and "//" not in value and not value.startswith(REDACTED)
            and value.lower() not in ("bearer", "basic", "digest")):
        return f"{m.group('name')}{m.group('sep')}{REDACTED}"
    return m.group(0)


def redact_text(text: str | bytes) -> str:
    """Rule 2: cut secrets out of free text, keeping the rest."""
    text = to_text(text)
    text = _PEM_BLOCK.sub(REDACTED, text)
    text = _WEBHOOK.sub(lambda m: f"{m.group('keep')}{REDACTED}", text)
    text = _URL_USERINFO.sub(_userinfo, text)
    text = _TEXT_FLAG.sub(_text_flag, text)
    text = _QUERY_PARAM.sub(_query, text)
    text = _AUTH_HEADER.sub(_auth_header, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    text = _SECRET_PAIR.sub(_secret_pair, text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def redact_value(name: str | bytes, value: str | bytes) -> str:
    """One environment value under its name."""
    if is_secret_name(to_text(name)):
        return REDACTED
    return redact_text(value)


def redact_env(env: Mapping[str | bytes, str | bytes] | None) -> dict[str, str]:
    """Rules 1-3 over a whole environment; names are kept (decoded)."""
    if not env:
        return {}
    return {to_text(name): redact_value(name, value) for name, value in env.items()}


def _program(argv0: str) -> str:
    return os.path.basename(argv0)


def _redact_flag(arg: str, program: str) -> tuple[str, bool]:
    """(redacted entry, whether the NEXT entry is a secret value)."""
    m = _FLAG.match(arg)
    if m is None:
        return redact_text(arg), False
    dashes, name, value = m.group("dashes"), m.group("name"), m.group("value")
    if program in _MYSQL_PROGRAMS and dashes == "-" and name.startswith("p") and len(arg) > 2:
        return f"-p{REDACTED}", False  # mysql -pSECRET (attached, no space)
    if program == "sshpass" and arg == "-p":
        return arg, True
    if program in _USERPASS_PROGRAMS and name in ("u", "user"):
        if m.group("eq"):
            return f"{dashes}{name}={_user_colon_pw(value)}", False
        return arg, True
    if is_secret_name(name) or name in _SECRET_SHORT_FLAGS:
        if m.group("eq"):
            return f"{dashes}{name}={REDACTED}", False
        return arg, True
    return redact_text(arg), False


def _user_colon_pw(value: str) -> str:
    user, colon, _pw = value.partition(":")
    return f"{user}:{REDACTED}" if colon else value


def redact_argv(argv: Sequence[str | bytes] | None) -> list[str]:
    """argv rules; the program name is argv[0]."""
    if not argv:
        return []
    args = [to_text(a) for a in argv]
    program = _program(args[0])
    out = [redact_text(args[0])]
    secret_next: str | None = None  # the flag that makes the next entry secret
    for arg in args[1:]:
        if secret_next is not None:
            flag, secret_next = secret_next, None
            user_flag = program in _USERPASS_PROGRAMS and flag in ("-u", "--user")
            out.append(_user_colon_pw(arg) if user_flag else REDACTED)
            continue
        assignment = _ASSIGNMENT.match(arg)
        if assignment is not None and not arg.startswith("-"):
            out.append(f"{assignment.group('name')}="
                       f"{redact_value(assignment.group('name'), assignment.group('value'))}")
            continue
        redacted, takes_next = _redact_flag(arg, program)
        out.append(redacted)
        if takes_next:
            secret_next = arg
    return out
