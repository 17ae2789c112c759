"""Shared test setup.

Privileged tests (real probes, real kernels) must run in CI, not skip: when
CI=true or PROVTRACE_REQUIRE_PRIVILEGED=1, a skipped `privileged` test is
reported as a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

from pathlib import Path

import pytest

TEST_USER = "provtrace-test"  # a real non-root user for authorization tests

# The suite never talks to the host's daemon by accident: `provtrace run`, as
# root too, hands its command to whatever answers on the default socket. Here
# the default socket ($PROVTRACE_SOCKET, inherited by every provtrace a test
# starts) is a path nothing listens on; a test that wants a daemon starts its
# own on a temporary socket and names it (--socket, or PROVTRACE_SOCKET).
os.environ["PROVTRACE_SOCKET"] = os.path.join(tempfile.gettempdir(), f"provtrace-tests-{os.getpid()}-no-daemon",
                                              "provtrace.sock")


def _require_privileged() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("PROVTRACE_REQUIRE_PRIVILEGED") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and item.get_closest_marker("privileged") and _require_privileged():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"privileged test skipped where it must run (CI): {reason}"


@pytest.fixture(scope="session")
def capture():
    """One loaded set of probes for the whole session (bcc compiles once)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for eBPF")
    from provtrace.tracer.capture.ebpf import EbpfCapture

    cap = EbpfCapture()
    cap.calibrate_created_bit()
    yield cap
    cap.close()


@pytest.fixture(scope="session")
def test_user():
    """The non-root user `provtrace-test`, created when missing (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create and become a non-root user")
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


@pytest.fixture
def root_tmp_dir():
    """A root-owned 0755 folder under sticky /tmp (the shape the tests' daemons use):
    other users may traverse it, only root may change it. Removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = tempfile.mkdtemp(prefix="provtrace-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def users_dir(test_user):
    """/tmp/X (root, 0755) holding a root-only secret and work/, a dir of test_user's."""
    base = tempfile.mkdtemp(prefix="provtrace-fp-", dir="/tmp")
    os.chmod(base, 0o755)
    secret = os.path.join(base, "secret")
    with open(secret, "w") as f:
        f.write("root only\n")
    os.chmod(secret, 0o600)
    work = os.path.join(base, "work")
    os.mkdir(work)
    os.chown(work, test_user.pw_uid, test_user.pw_gid)
    yield Path(base), Path(secret), Path(work)
    shutil.rmtree(base, ignore_errors=True)
