"""Jupyter integration: reports kernels and cells to the provtrace daemon.

- provisioner.py: a kernel provisioner that registers each kernel it launches
  (pid, connection file, notebook path);
- server_extension.py, connection.py: a jupyter_server extension that reports
  each cell's start (with JupyterLab's cellId) and end;
- messages.py reads the wire forms, reporter.py talks to the daemon off the
  server's event loop, kernels.py is what both know of a kernel.
"""


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server's entry: the module holding _load_jupyter_server_extension."""
    return [{"module": "provtrace.tracer.jupyter.server_extension"}]
