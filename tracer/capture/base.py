"""The Capture contract: what the pipeline (tracer/pipeline/) asks of a backend.

Two backends implement it: EbpfCapture (ebpf.py: the probes and their ring
buffer) and PtraceCapture (ptrace.py: a tracer thread that queues events).
Both are producers of event batches; the pipeline polls them, turns each
batch into model events with decode(), and feeds each run's Tracker. Neither
takes over the loop.

open_capture() picks one, as `provtrace run --backend` asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import CaptureUnavailable

if TYPE_CHECKING:
    from ..model import events as E
    from .decode import Decoder

BACKENDS = ("auto", "ebpf", "ptrace")


@runtime_checkable
class Capture(Protocol):
    """A source of kernel events for the processes it traces."""

    name: str  # "ebpf" | "ptrace": what a run's header says traced it
    created_mask: int  # the f_mode bit that says an open created its file (0: not calibrated)
    gaps: dict[str, int]  # what this capture could not see, counted by kind, for the end record

    def trace(self, pid: int, tag: int) -> None:
        """Follow a running pid, and every child it forks from now on, under tag."""

    def untrace(self, pid: int) -> None:
        """Stop following pid (its children already forked stay followed)."""

    def traced_pids(self) -> list[int]:
        """The pids followed now."""

    def spawn(self, exe: str, argv: Sequence[str], env: Mapping[str, str], cwd: str, tag: int,
              started: Callable[[int], None] | None = None) -> int:
        """Start exe behind the fork gate (gate.py), traced under tag from its
        exec on; started(pid) runs before it is released. Returns its pid."""

    def reap(self, pid: int) -> tuple[int, bytes] | None:
        """(wait status, exec errno digits or b"") once the spawned pid is done, else None."""

    def abandon(self) -> None:
        """The consumer failed: leave what spawn started safe (never stopped forever)."""

    def poll(self, timeout_ms: int) -> list:
        """Wait up to timeout_ms; return one bounded batch (maybe empty)."""

    def drain_batches(self) -> Iterator[list]:
        """What is already there, one bounded batch at a time, without waiting."""

    def decode(self, batch: list, decoder: Decoder) -> list[E.Event]:
        """A batch as model events (decoder counts records that do not decode)."""

    def sweep(self, pids: set[int]) -> list[E.Event]:
        """The fd counters of pids the capture still holds, as FLUSH_SWEEP FdIO events."""

    def lost(self) -> dict[str, int]:
        """Events that could not be delivered, by reason (the probes' LOST_REASONS)."""

    def wake(self) -> None:
        """End a poll() waiting in another thread now."""

    def close(self) -> None:
        """Release what the capture holds (probes, threads)."""


def open_capture(backend: str, *, root: bool) -> tuple[Capture, list[dict]]:
    """The capture `--backend` asks for, and the gap records a run traced with it starts with.

    auto: eBPF as root, else ptrace; as root, ptrace too when this kernel or host
    cannot run the probes (the reason kept as an `ebpf_unavailable` gap, so the
    run says how it was traced and why: docs/kernels.md).
    """
    if backend not in BACKENDS:
        raise CaptureUnavailable(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "ebpf" and not root:
        raise CaptureUnavailable("eBPF tracing needs root; run as root, or trace with "
                                 "--backend ptrace (see 'provtrace doctor')")
    if backend == "ptrace" or not root:  # asked for, or a user's fallback
        from .ptrace import PtraceCapture  # noqa: PLC0415

        return PtraceCapture(), []
    from .ebpf import EbpfCapture  # noqa: PLC0415

    try:
        return EbpfCapture(), []
    except CaptureUnavailable as e:
        if backend != "auto":
            raise
        from .ptrace import PtraceCapture  # noqa: PLC0415

        return PtraceCapture(), [{"what": "ebpf_unavailable", "detail": str(e)}]


def calibrated(capture: Capture | None) -> Capture:
    """capture, or the probes loaded here when None, with its FMODE_CREATED bit known."""
    if capture is None:
        from .ebpf import EbpfCapture  # noqa: PLC0415

        capture = EbpfCapture()
    if not capture.created_mask:
        capture.calibrate_created_bit()  # the probes' f_mode bit, found once per load (ebpf.py)
    return capture
