"""KernelFacts: what the provisioner and the server extension tell the daemon
about one launched kernel, and where they find it.

jupyter_server launches a notebook's kernel with `JPY_SESSION_NAME` in its
environment (SessionManager.get_kernel_env): the notebook's absolute path
when the client sent a session name, else the session's API path, which is
relative to the server's root. jupyter_client's LocalProvisioner also writes
that value into the connection file as `jupyter_session`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

SESSION_ENV = "JPY_SESSION_NAME"


@dataclass(frozen=True)
class KernelFacts:
    kernel_id: str | None
    pid: int
    connection_file: str | None = None
    notebook_path: str | None = None
    kernel_name: str | None = None
    language: str | None = None
    cwd: str | None = None
    session_id: str | None = None  # set when our provisioner registered this pid already


def notebook_path(session_name: str | None, cwd: str | os.PathLike | None) -> str | None:
    """The notebook's absolute path from JPY_SESSION_NAME, or None.

    A relative value is an API path; the kernel's cwd is the notebook's
    folder (jupyter_server's default), so its file name is joined to it.
    """
    if not session_name:
        return None
    if os.path.isabs(session_name):
        return os.path.normpath(session_name)
    if cwd is None:
        return None
    return os.path.join(os.fspath(cwd), os.path.basename(session_name))


def session_name_in(connection_file: str | None) -> str | None:
    """The `jupyter_session` value LocalProvisioner wrote into a connection file."""
    if not connection_file:
        return None
    try:
        with open(connection_file, encoding="utf-8") as f:
            value = json.load(f).get("jupyter_session")
    except (OSError, ValueError, AttributeError) as exc:
        log.debug("event=connection-file-unreadable path=%s error=%r", connection_file, str(exc))
        return None
    return value if isinstance(value, str) else None


def facts_of(km) -> KernelFacts | None:
    """What a jupyter_client KernelManager knows of its running kernel; None before launch."""
    provisioner = getattr(km, "provisioner", None)
    pid = getattr(provisioner, "pid", None)
    if not isinstance(pid, int) or pid <= 0:
        return None
    spec = getattr(km, "_kernel_spec", None)  # loaded at launch; the property would reread disk
    return KernelFacts(
        kernel_id=getattr(km, "kernel_id", None), pid=pid,
        connection_file=getattr(km, "connection_file", None) or None,
        notebook_path=getattr(provisioner, "notebook_path", None),
        kernel_name=getattr(km, "kernel_name", None) or None,
        language=getattr(spec, "language", None) or None,
        cwd=os.fspath(provisioner.cwd) if getattr(provisioner, "cwd", None) else None,
        session_id=getattr(provisioner, "session_id", None) if getattr(provisioner, "registered_pid", None) == pid
        else None,
    )
