"""
X displays for the viewer: is there one, a private Xvfb when there is not, screen grabs, keys.

- :func:`check_display` opens the display the way PyBullet will (libX11 through ctypes) and
  looks for GLX, so a missing display is one clear line instead of PyBullet's ``exit(1)``;
- :class:`Xvfb` starts a virtual display of its own (``Xvfb -displayfd``: the server picks a
  free display number), for tests, the screenshot tool and a headless ``make demo GUI=1``;
- :func:`find_window`, :func:`grab` and :class:`Keyboard` (xdotool, XTEST) look at and type
  into the real window, as a person would.

System packages (Debian): ``xvfb``, ``libgl1-mesa-dri`` (software OpenGL), ``xdotool``;
``make setup`` installs them when it runs as root.
"""
import ctypes
import ctypes.util
import os
import select
import shutil
import signal
import subprocess
import time

PACKAGES = {'Xvfb': 'xvfb', 'xdotool': 'xdotool'}
SCREEN = (1280, 800, 24)
XVFB_HINT = "xvfb-run -a -s '-screen 0 1280x800x24' <command>"


def _die_with_parent():
    # The server goes when we go, however we go (PR_SET_PDEATHSIG = 1).
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _missing(tool):
    return (f'{tool} not found (Debian package {PACKAGES[tool]}; make setup installs it as '
            'root)')


def check_display(display=None):
    """
    Return None if X display ``display`` (default $DISPLAY) can show OpenGL, else the problem.

    The problem is one sentence naming the display and what to do.
    """
    display = display if display is not None else os.environ.get('DISPLAY', '')
    if not display:
        return f'no X display: DISPLAY is not set (run on a desktop, or under {XVFB_HINT})'
    name = ctypes.util.find_library('X11')
    if name is None:
        return 'no X display: libX11 is not installed (Debian package libx11-6)'
    x11 = ctypes.CDLL(name)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = x11.XOpenDisplay(display.encode())
    if not handle:
        return f'no X display: cannot open DISPLAY={display!r} (is the X server running?)'
    try:
        gl_name = ctypes.util.find_library('GL')
        if gl_name is None:
            return 'no OpenGL: libGL is not installed (Debian package libgl1)'
        gl = ctypes.CDLL(gl_name)
        gl.glXQueryExtension.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                         ctypes.POINTER(ctypes.c_int)]
        error, event = ctypes.c_int(), ctypes.c_int()
        if not gl.glXQueryExtension(handle, ctypes.byref(error), ctypes.byref(event)):
            return (f'no OpenGL on DISPLAY={display!r}: the X server has no GLX extension '
                    '(Xvfb: +extension GLX; Debian package libgl1-mesa-dri)')
    finally:
        x11.XCloseDisplay(handle)
    return None


class Xvfb:
    """A private virtual X display; the server picks a free display number (``-displayfd``)."""

    def __init__(self, width=SCREEN[0], height=SCREEN[1], depth=SCREEN[2]):
        self.screen = f'{int(width)}x{int(height)}x{int(depth)}'
        self.process = None
        self.display = None

    def start(self, timeout=15.0):
        """Start the server; return its display name (':N'). Raise RuntimeError on failure."""
        exe = shutil.which('Xvfb')
        if exe is None:
            raise RuntimeError(_missing('Xvfb'))
        read, write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [exe, '-displayfd', str(write), '-screen', '0', self.screen, '-nolisten',
                 'tcp', '+extension', 'GLX', '-noreset'],
                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            os.close(write)
        number = b''
        deadline = time.monotonic() + timeout
        try:
            while not number.endswith(b'\n') and self.process.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if select.select([read], [], [], min(left, 0.2))[0]:
                    chunk = os.read(read, 16)
                    if not chunk:
                        break
                    number += chunk
        finally:
            os.close(read)
        if not number.strip():
            error = b''
            if self.process.poll() is not None:
                error = self.process.stderr.read() or b''
            self.stop()
            raise RuntimeError('Xvfb did not start: '
                               + (error.decode(errors='replace').strip().splitlines() or
                                  ['no display number within the timeout'])[-1])
        self.display = f':{int(number.strip())}'
        return self.display

    def stop(self):
        """Stop the server (and wait for it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_exc):
        self.stop()


def _xdotool(display, *args, timeout=10.0):
    exe = shutil.which('xdotool')
    if exe is None:
        raise RuntimeError(_missing('xdotool'))
    result = subprocess.run([exe, *args], env={**os.environ, 'DISPLAY': display},
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout


def find_window(display, name, timeout=0.0):
    """
    Return (window id, x, y, width, height) of the first window whose name contains ``name``.

    Wait up to ``timeout`` s for it to appear; None if it does not.
    """
    deadline = time.monotonic() + timeout
    while True:
        code, out = _xdotool(display, 'search', '--name', name)
        ids = out.split()
        if code == 0 and ids:
            window = ids[0]
            code, geometry = _xdotool(display, 'getwindowgeometry', '--shell', window)
            values = dict(line.split('=', 1) for line in geometry.split() if '=' in line)
            if code == 0 and {'X', 'Y', 'WIDTH', 'HEIGHT'} <= set(values):
                return (window, int(values['X']), int(values['Y']), int(values['WIDTH']),
                        int(values['HEIGHT']))
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def grab(display, box=None):
    """Return a PIL image of the screen of ``display``, or of ``box`` (x, y, width, height)."""
    from PIL import ImageGrab
    bbox = None if box is None else (box[0], box[1], box[0] + box[2], box[1] + box[3])
    return ImageGrab.grab(bbox=bbox, xdisplay=display)


class Keyboard:
    """Key presses into one window through XTEST (xdotool), as a person's keyboard gives."""

    def __init__(self, display, window):
        self.display = display
        self.window = str(window)

    def _run(self, *args):
        code, _out = _xdotool(self.display, *args)
        if code != 0:
            raise RuntimeError(f'xdotool {" ".join(args)} failed (exit {code})')

    def focus(self):
        self._run('windowfocus', '--sync', self.window)

    def down(self, key):
        self._run('keydown', key)

    def up(self, key):
        self._run('keyup', key)

    def tap(self, key, hold=0.15):
        """Press and release ``key`` (held ``hold`` s so a slow viewer frame still sees it)."""
        self.down(key)
        time.sleep(hold)
        self.up(key)

    def hold(self, key, seconds):
        """Hold ``key`` down for ``seconds``; return the (monotonic) press and release times."""
        self.down(key)
        pressed = time.monotonic()
        time.sleep(seconds)
        self.up(key)
        return pressed, time.monotonic()
