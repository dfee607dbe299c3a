"""
Keyboard reading for teleoperation: the terminal in cbreak mode, always restored.

Keys are read one at a time, without echo and without waiting for Enter, in a background
thread and handed over through a queue. Unlike full raw mode, cbreak keeps the terminal's
signal keys, so Ctrl-C still raises SIGINT and the node shuts down (and holds the arm) the
usual way. The previous terminal settings come back on :meth:`KeyReader.close`, at interpreter
exit, and after SIGTERM/SIGHUP.
"""
import atexit
import os
import queue
import select
import signal
import sys
import termios
import threading
import tty


def stdin_is_tty():
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):
        return False


class KeyReader:
    """Read single keys from a terminal file descriptor in a daemon thread."""

    def __init__(self, fd=None):
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.keys = queue.Queue()
        self._saved = None
        self._stop = threading.Event()
        self._thread = None
        self._old_handlers = {}

    def start(self):
        """Switch the terminal to cbreak mode and start reading."""
        self._saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):   # not the main thread, or not allowed
                pass
        tty.setcbreak(self.fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._run, name='keyboard', daemon=True)
        self._thread.start()
        return self

    def _on_signal(self, signum, frame):
        self.restore()
        previous = self._old_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def _run(self):
        while not self._stop.is_set():
            try:
                ready, _w, _x = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 32)
            except (OSError, ValueError):
                return
            if not data:
                return
            for char in data.decode(errors='ignore'):
                self.keys.put(char)

    def drain(self):
        """Return every key pressed since the last call, in order."""
        pressed = []
        while True:
            try:
                pressed.append(self.keys.get_nowait())
            except queue.Empty:
                return pressed

    def restore(self):
        """Put the terminal back as it was (idempotent)."""
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self.restore()


def write_terminal(text, stream=None):
    """Write text for the operator straight to the terminal (not through the logger)."""
    stream = stream or sys.stderr
    stream.write(text)
    stream.flush()
