"""Ctrl-C that ends a run, whatever library code it lands in.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. When
that is inside Python code that C++ calls, the C++ side decides what happens to it: OpenVINO's
PyTorch frontend (ov.convert_model of a torch module, which the quantize stage and the OpenVINO
baseline run) calls back into its Python TorchScript decoder, and an interrupt raised there comes
out nowhere (the conversion finishes normally), as a RuntimeError "... KeyboardInterrupt: <EMPTY
MESSAGE>" that an ordinary `except Exception` fallback handles, or (seen once) as a C++ terminate
that aborts the process.
The interpreter itself swallows one raised in a weakref callback or a finalizer.

`watch()` (the CLI wraps a run in it) installs a SIGINT handler that records the interrupt and
raises KeyboardInterrupt as usual, except inside OpenVINO or the import system, where it asks again
a moment later; `check()` raises KeyboardInterrupt if one arrived, whether or not someone swallowed
it. Once one is raised, further SIGINTs are ignored, so that the run can record that it was
interrupted. Outside `watch()` (the Python API) `check()` does nothing.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received = False   # a SIGINT arrived under watch()
_raised = False     # and a KeyboardInterrupt has been raised for it: the run is on its way out
_retry: threading.Timer | None = None


def _unsafe(frame) -> bool:
    """Is the main thread where a KeyboardInterrupt does harm: inside OpenVINO's Python code (its
    frontend is called from C++, which swallows an exception from it or turns it into a
    RuntimeError), or inside the import system (importlib's module-lock weakref callback swallows
    it, and one raised between its `_imp.acquire_lock()` and `try:` leaves the global import lock
    held: the next os.fork() on another thread, e.g. OpenVINO telemetry's, hangs)?"""
    openvino = sys.modules.get("openvino")
    root = os.path.dirname(openvino.__file__) + os.sep if getattr(openvino, "__file__", None) else None
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib") or (root and name.startswith(root)):
            return True
        frame = frame.f_back
    return False


def _raise() -> None:
    global _raised
    _raised = True
    if _retry is not None:
        _retry.cancel()
    raise KeyboardInterrupt


def _again() -> None:
    if _received and not _raised:
        os.kill(os.getpid(), signal.SIGINT)   # to the process, so that it wakes the main thread


def _on_sigint(signum, frame) -> None:
    global _received, _retry
    if _raised:   # a repeat of ours or a second Ctrl-C while the run winds up: let it write its status
        return
    _received = True
    if _unsafe(frame):   # not here: ask again in a moment, until the main thread is back in ordinary code
        if _retry is not None:
            _retry.cancel()
        _retry = threading.Timer(0.1, _again)
        _retry.daemon = True
        _retry.start()
        return
    _raise()


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT arrived under `watch()`, even one a library caught."""
    if _received:
        _raise()


@contextmanager
def watch() -> Iterator[None]:
    """Record SIGINTs while the block runs (main thread, default Ctrl-C handling only: a SIGINT the
    parent process ignores, or a handler someone else installed, is left alone)."""
    global _received, _raised, _retry
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _received, _raised, _retry = False, False, None
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        if _retry is not None:
            _retry.cancel()
        interrupted = _received
        _received, _raised, _retry = False, False, None
        # Interrupted, the CLI is on its way out with 130: a repeat of ours may still be in flight; ignore it.
        signal.signal(signal.SIGINT, signal.SIG_IGN if interrupted else signal.default_int_handler)
    if interrupted:   # a Ctrl-C after the run's last check: the run is complete, and the CLI still exits 130
        raise KeyboardInterrupt
