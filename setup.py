"""The compiled part of provtrace, built by `pip install` (setup.sh): the
ring-buffer decoder tracer/capture/_decode.c. Optional: where it cannot be
built, provtrace decodes in Python (the same events, slower) and
`provtrace doctor` says so. Everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("provtrace.tracer.capture._decode", ["tracer/capture/_decode.c"],
                             extra_compile_args=["-O2"], optional=True)])
