"""ProvtraceProvisioner: jupyter_client's LocalProvisioner that also registers
each kernel it launches with the provtrace daemon (RegisterKernel: pid,
connection file, kernel name and language, and the notebook path from
JPY_SESSION_NAME when a Jupyter server launched it).

Registered as the entry point `provtrace-local-provisioner` of the group
`jupyter_client.kernel_provisioners`. Turn it on for every kernel with
    c.KernelProvisionerFactory.default_provisioner_name = "provtrace-local-provisioner"
(or JUPYTER_DEFAULT_PROVISIONER_NAME), or for one kernelspec with
    "metadata": {"kernel_provisioner": {"provisioner_name": "provtrace-local-provisioner"}}
in its kernel.json. A daemon that is absent or refuses costs one warning; the
kernel starts regardless.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float, Unicode

from ..serve.client import ProvtraceClient
from ..errors import TracerError
from .kernels import SESSION_ENV, KernelFacts, notebook_path
from .reporter import register, resolve_socket, warn_unreachable

log = logging.getLogger(__name__)

PROVISIONER_NAME = "provtrace-local-provisioner"


class ProvtraceProvisioner(LocalProvisioner):
    socket_path = Unicode(
        "", config=True,
        help="The provtrace daemon's socket; empty: PROVTRACE_SOCKET in the kernel's or this "
             "process's environment, else /run/provtrace/provtrace.sock.")
    register_timeout_s = Float(
        3.0, config=True, help="How long registering a kernel may take before the kernel goes on unregistered.")

    session_id: str | None = None  # the daemon's session for registered_pid
    registered_pid: int | None = None
    notebook_path: str | None = None

    async def post_launch(self, **kwargs: Any) -> None:
        await super().post_launch(**kwargs)
        env = kwargs.get("env") or {}
        self.notebook_path = notebook_path(env.get(SESSION_ENV), self.cwd)
        self.session_id, self.registered_pid = None, None
        if self.pid is None:
            return
        facts = KernelFacts(
            kernel_id=self.kernel_id, pid=self.pid,
            connection_file=getattr(self.parent, "connection_file", None) or None,
            notebook_path=self.notebook_path,
            kernel_name=getattr(self.parent, "kernel_name", None) or None,
            language=getattr(self.kernel_spec, "language", None) or None)
        socket_path = resolve_socket(self.socket_path, env)
        # the call blocks; a Jupyter server's event loop must not wait on it
        self.session_id = await asyncio.to_thread(self._register, socket_path, facts)
        if self.session_id is not None:
            self.registered_pid = self.pid

    def _register(self, socket_path: str, facts: KernelFacts) -> str | None:
        client = ProvtraceClient(socket_path, timeout_s=self.register_timeout_s)
        try:
            return register(client, facts)
        except TracerError as exc:
            warn_unreachable(socket_path, exc)
            return None
        finally:
            client.close()
