"""Connecting to the central PostgreSQL: psycopg 3, one-line errors."""

from __future__ import annotations

from ..errors import TracerError


class FleetError(TracerError):
    """The central store cannot be reached or used; the message says which and why."""


def is_url(text: str | None) -> bool:
    return bool(text) and text.startswith(("postgresql://", "postgres://"))


def _psycopg():
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        raise FleetError("the fleet store needs psycopg 3: pip install 'provtrace[fleet]' "
                         "(setup.sh installs it)") from None
    return psycopg


def connect(url: str, *, autocommit: bool = False, timeout_s: float = 10.0):
    """A connection to url; FleetError naming the server (never the password) when it fails."""
    psycopg = _psycopg()
    try:
        # keepalives and a TCP user timeout: a network cut that drops packets
        # silently (no reset) fails the connection within about a minute,
        # instead of leaving a shipper blocked for the kernel's 15.
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s)),
                               application_name="provtrace", keepalives=1, keepalives_idle=30,
                               keepalives_interval=10, keepalives_count=3, tcp_user_timeout=60_000)
    except psycopg.Error as e:
        raise FleetError(f"cannot connect to the fleet store {redact(url)}: "
                         f"{first_line(e)}") from e


def redact(url: str) -> str:
    """url without its password."""
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        info = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - a malformed URL: say nothing of it
        return "postgresql://…"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def errors():
    """The exception classes a live link to the database throws (for loops that survive them)."""
    return (_psycopg().Error,)
