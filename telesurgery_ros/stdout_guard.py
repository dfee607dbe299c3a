"""
Standard output of the command-line tools, safe to write after its reader has gone.

``telesurgery-bench all | head`` closes the pipe after ten lines. Python ignores SIGPIPE, so
the next write raises ``BrokenPipeError``: a traceback in the main thread, and in a thread that
copies a node's output, a dead thread and then a node that blocks on its full pipe. A plain
``SIGPIPE`` default action is no answer either: it would kill the tool in the middle of a
write, before it stops the nodes it started.

:func:`guard` replaces ``sys.stdout`` with a wrapper that absorbs that error. On the first
broken write it points file descriptor 1 at ``/dev/null`` (so every later write, and the
interpreter's own flush at exit, is silent) and sets :data:`CLOSED`. The tool's main loop reads
:data:`CLOSED` where stopping is safe, stops what it started, says so with :func:`say_closed` on
standard error, and exits with :data:`EXIT_CODE`.
"""
import os
import sys
import threading

CLOSED = threading.Event()
EXIT_CODE = 141        # 128 + SIGPIPE: what a shell reports for a writer whose reader ended


class _Guarded:
    """``sys.stdout`` that turns a broken pipe into :data:`CLOSED` instead of an exception."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if not CLOSED.is_set():
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                _close()
        return len(text)

    def flush(self):
        if not CLOSED.is_set():
            try:
                self._stream.flush()
            except BrokenPipeError:
                _close()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _close():
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.__stdout__.fileno())
    finally:
        os.close(devnull)
    CLOSED.set()


def guard():
    """Install the wrapper on ``sys.stdout`` (once; later calls do nothing)."""
    if not isinstance(sys.stdout, _Guarded):
        sys.stdout = _Guarded(sys.stdout)


def say_closed(prog, what):
    """One line on standard error: ``prog: standard output was closed (...): what``."""
    print(f'{prog}: standard output was closed (its reader ended): {what}', file=sys.stderr)
