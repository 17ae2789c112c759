"""Kernel command lines as launchers really write them."""

from __future__ import annotations

import pytest

from provtrace.tracer.correlate.kernels import match_kernel_argv

F = "/run/user/1000/jupyter/runtime/kernel-4f1d.json"


@pytest.mark.parametrize(
    "argv, language, launcher",
    [
        (["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", F], "python", "ipykernel"),
        (["python", "-m", "ipykernel_launcher", f"--f={F}"], "python", "ipykernel"),  # VS Code
        (["/opt/conda/bin/python", "-m", "ipykernel", "-f", F], "python", "ipykernel"),
        (["/usr/lib/R/bin/exec/R", "--slave", "-e", "IRkernel::main()", "--args", F], "R", "irkernel"),
        (["R", "--no-echo", "--no-restore", "-e", "IRkernel::main()", "--args", F], "R", "irkernel"),
        (["julia", "-i", "--color=yes", "-e", "import IJulia; IJulia.run_kernel()", F], "julia", "ijulia"),
        (["/opt/julia-1.10/bin/julia", "-i", "--color=yes", "--project=@.", "-e",
          "import IJulia; IJulia.run_kernel()", F], "julia", "ijulia"),
        (["julia", "-i", "--startup-file=yes", "--color=yes",
          "/home/u/.julia/packages/IJulia/abc/src/kernel.jl", F], "julia", "ijulia"),
        (["/usr/bin/xcpp", "-f", F, "-std=c++17"], "xcpp", "generic"),
    ],
)
def test_kernel_command_lines(argv, language, launcher):
    got = match_kernel_argv(argv)
    assert got is not None
    assert (got.language, got.connection_file, got.launcher) == (language, F, launcher)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bash"],
        ["julia", "script.jl"],
        ["R", "--slave", "-e", "print(1)"],
        ["R", "-e", "IRkernel::main()"],  # no --args FILE
        ["python3", "-m", "http.server"],
        ["julia", "-e", "import IJulia; IJulia.run_kernel()"],  # no file
    ],
)
def test_not_kernels(argv):
    assert match_kernel_argv(argv) is None
