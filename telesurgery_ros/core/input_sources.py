"""
Surgeon input sources: scripted trajectories, CSV replay and a keyboard key map.

Every source answers :meth:`sample` with an :class:`InputSample` (hand pose in input space,
metres and an x, y, z, w quaternion; jaw angle in rad; clutch) for a time ``t`` in seconds
since the source started. Only differences of the input matter to the mapping
(:mod:`telesurgery_ros.core.teleop`), so input space has no fixed origin. Pure logic: no rclpy,
no clock, no terminal.
"""
import csv
from dataclasses import dataclass
import math

import numpy as np

from telesurgery_ros.core.params import ConfigError
from telesurgery_ros.core.teleop import (
    JAW_LIMITS, quat_from_rotvec, quat_multiply, quat_normalize)

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


@dataclass
class InputSample:
    """The operator's hand at one instant."""

    position: np.ndarray
    orientation: np.ndarray      # x, y, z, w
    jaw: float = 0.0
    clutch: bool = False


def smoothstep(x):
    """0 -> 1 with zero slope at both ends (C1), clamped outside [0, 1]."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


# --- scripted trajectories -------------------------------------------------------------

SHAPES = ('circle', 'figure_eight', 'suture')


class TrajectoryInput:
    """
    Deterministic scripted surgeon motion, starting at its centre with zero velocity.

    ``circle``: radius ``amplitude`` in the x-y plane; ``figure_eight``: a lemniscate of
    Gerono, ``amplitude`` wide; ``suture``: a needle-driving cycle (pause, a half-ellipse arc in
    the y-z plane, ``amplitude`` wide and ``arc_depth * amplitude`` deep, with a wrist roll;
    release: jaw opens and closes; return arc above). ``frequency`` is cycles per second,
    ``center`` offsets input space, and the amplitude ramps in over ``ramp`` seconds so the
    first sample is the centre.
    """

    jaw_open = 0.7             # rad, suture release
    # Depth of the needle-drive arc as a fraction of the amplitude: at the default 20 mm the
    # tip dips 10 mm, clear of the task board 15 mm below the home pose (a full 20 mm dip
    # struck the board at 55 N and latched ESTOP in every profile of the tracking benchmark).
    arc_depth = 0.5
    roll = math.radians(30.0)  # rad, wrist roll during the suture arc

    def __init__(self, shape='circle', amplitude=0.02, frequency=0.2,
                 center=(0.0, 0.0, 0.0), ramp=1.0):
        if shape not in SHAPES:
            raise ValueError(f'shape must be one of {SHAPES}, got {shape!r}')
        self.shape = shape
        self.amplitude = float(amplitude)
        self.frequency = float(frequency)
        self.center = np.array(center, float)
        self.ramp = float(ramp)

    def _envelope(self, t):
        return 1.0 if self.ramp <= 0.0 else smoothstep(t / self.ramp)

    def sample(self, t):
        t = max(0.0, float(t))
        a = self.amplitude * self._envelope(t)
        phase = 2.0 * math.pi * self.frequency * t
        orientation, jaw = IDENTITY, 0.0
        if self.shape == 'circle':
            offset = np.array([a * math.sin(phase), a * (1.0 - math.cos(phase)), 0.0])
        elif self.shape == 'figure_eight':
            offset = np.array([a * math.sin(phase), 0.5 * a * math.sin(2.0 * phase), 0.0])
        else:
            offset, angle, jaw = self._suture((self.frequency * t) % 1.0, a)
            orientation = quat_from_rotvec([angle, 0.0, 0.0])
        return InputSample(self.center + offset, orientation, jaw)

    def _suture(self, u, a):
        """One stitch at cycle fraction ``u``: (offset, wrist roll, jaw)."""
        if u < 0.15:                                  # pause, needle grasped
            phi, jaw = 0.0, 0.0
        elif u < 0.50:                                # drive the needle: arc below
            phi, jaw = math.pi * smoothstep((u - 0.15) / 0.35), 0.0
        elif u < 0.70:                                # release and regrasp
            phi = math.pi
            jaw = self.jaw_open * math.sin(math.pi * (u - 0.50) / 0.20) ** 2
        else:                                         # pull through: arc back above
            phi, jaw = math.pi * (1.0 + smoothstep((u - 0.70) / 0.30)), 0.0
        offset = np.array([0.0, a * (1.0 - math.cos(phi)), -self.arc_depth * a * math.sin(phi)])
        angle = self.roll * math.sin(0.5 * phi)
        return offset, angle, jaw

    def peak_speed(self, duration=None, rate=1000.0):
        """Largest speed of the shape (m/s), measured over one cycle after the ramp."""
        duration = duration or (self.ramp + 1.0 / self.frequency)
        t = np.arange(0.0, duration, 1.0 / rate)
        p = np.array([self.sample(x).position for x in t])
        return float(np.max(np.linalg.norm(np.diff(p, axis=0), axis=1)) * rate)


# --- CSV replay -------------------------------------------------------------------------

REPLAY_COLUMNS = ('t', 'x', 'y', 'z', 'qx', 'qy', 'qz', 'qw', 'jaw')
_QUATERNION_TOLERANCE = 0.01


@dataclass
class Recording:
    """A parsed replay file: times (s, from 0), positions, quaternions, jaw angles."""

    t: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    jaw: np.ndarray

    @property
    def duration(self):
        return float(self.t[-1])


def parse_replay(lines, source='<replay>'):
    """
    Parse replay CSV text lines into a :class:`Recording`.

    Format: ``#`` comment lines and blank lines are ignored; the first other line is the
    header naming the columns ``t,x,y,z,qx,qy,qz,qw,jaw`` in any order (extra columns are
    ignored); each row is one sample: ``t`` in s (strictly increasing), position in m,
    a unit quaternion (x, y, z, w; normalised if within 1 %), jaw in rad. Problems raise
    :class:`ConfigError` naming ``source``, the line and the column.
    """
    header, columns, rows = None, None, []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith('#'):
            continue
        cells = next(csv.reader([text]))
        cells = [c.strip() for c in cells]
        if header is None:
            header = cells
            missing = [c for c in REPLAY_COLUMNS if c not in header]
            if missing:
                raise ConfigError([f'{source}: line {number}: header {text!r} lacks column(s) '
                                   f'{", ".join(missing)}; expected {",".join(REPLAY_COLUMNS)}'])
            columns = {name: header.index(name) for name in REPLAY_COLUMNS}
            continue
        if len(cells) != len(header):
            raise ConfigError([f'{source}: line {number}: {len(cells)} values, the header has '
                               f'{len(header)} columns'])
        values = {}
        for name, index in columns.items():
            cell = cells[index]
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise ConfigError([f'{source}: line {number}, column {index + 1} ({name}): '
                                   f'{cell!r} is not a finite number'])
            values[name] = value
        if rows and values['t'] <= rows[-1][0][1]:
            raise ConfigError([f'{source}: line {number}, column {columns["t"] + 1} (t): '
                               f'{values["t"]} s is not after the previous row '
                               f'({rows[-1][0][1]} s); times must increase strictly'])
        q = np.array([values[k] for k in ('qx', 'qy', 'qz', 'qw')])
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > _QUATERNION_TOLERANCE:
            raise ConfigError([f'{source}: line {number}, column {columns["qx"] + 1} (qx..qw): '
                               f'quaternion norm {norm:.4f} is not 1 '
                               f'(tolerance {_QUATERNION_TOLERANCE})'])
        if not JAW_LIMITS[0] <= values['jaw'] <= JAW_LIMITS[1]:
            raise ConfigError([f'{source}: line {number}, column {columns["jaw"] + 1} (jaw): '
                               f'{values["jaw"]} rad is outside {JAW_LIMITS[0]:.3f} to '
                               f'{JAW_LIMITS[1]:.3f} rad'])
        rows.append(((number, values['t']), values, q / norm))
    if header is None:
        raise ConfigError([f'{source}: no header line; expected {",".join(REPLAY_COLUMNS)}'])
    if len(rows) < 2:
        raise ConfigError([f'{source}: needs at least 2 samples, found {len(rows)}'])
    t = np.array([r[1]['t'] for r in rows])
    orientation = np.array([r[2] for r in rows])
    # Keep consecutive quaternions in the same hemisphere so interpolation takes the short way.
    for i in range(1, len(orientation)):
        if np.dot(orientation[i], orientation[i - 1]) < 0.0:
            orientation[i] = -orientation[i]
    return Recording(
        t=t - t[0],
        position=np.array([[r[1][k] for k in ('x', 'y', 'z')] for r in rows]),
        orientation=orientation,
        jaw=np.array([r[1]['jaw'] for r in rows]))


def load_replay(path):
    """Read and parse a replay CSV file; an unreadable file is a :class:`ConfigError`."""
    try:
        with open(path, newline='') as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError([f'replay file {path}: {exc.strerror}']) from None
    return parse_replay(lines, source=path)


class ReplayInput:
    """
    Plays a :class:`Recording` at real speed, interpolating between rows.

    At the end it holds the last row, or starts over when ``loop`` (the return from the last
    row to the first is then the relative mapping's job: the recording should end where it
    starts).
    """

    def __init__(self, recording, loop=False):
        self.recording = recording
        self.loop = bool(loop)

    def sample(self, t):
        rec = self.recording
        t = max(0.0, float(t))
        if self.loop and rec.duration > 0.0:
            t = t % rec.duration
        t = min(t, rec.duration)
        i = int(np.searchsorted(rec.t, t, side='right')) - 1
        i = min(max(i, 0), len(rec.t) - 2)
        u = (t - rec.t[i]) / (rec.t[i + 1] - rec.t[i])
        u = min(max(u, 0.0), 1.0)
        position = (1.0 - u) * rec.position[i] + u * rec.position[i + 1]
        orientation = quat_normalize((1.0 - u) * rec.orientation[i] + u * rec.orientation[i + 1])
        jaw = (1.0 - u) * rec.jaw[i] + u * rec.jaw[i + 1]
        return InputSample(position, orientation, float(jaw))


# --- keyboard ---------------------------------------------------------------------------

# key -> (kind, axis, sign). Axes are those of the RCM frame (x forward, y left, z up).
KEY_MAP = {
    'w': ('move', 0, +1), 's': ('move', 0, -1),
    'a': ('move', 1, +1), 'd': ('move', 1, -1),
    'r': ('move', 2, +1), 'f': ('move', 2, -1),
    'u': ('rotate', 0, +1), 'o': ('rotate', 0, -1),
    'i': ('rotate', 1, +1), 'k': ('rotate', 1, -1),
    'j': ('rotate', 2, +1), 'l': ('rotate', 2, -1),
    'n': ('jaw', 0, +1), 'm': ('jaw', 0, -1),
    ' ': ('clutch', 0, 0),
    '+': ('speed', 0, +1), '-': ('speed', 0, -1),
}

KEY_HELP = """\
master_console keyboard teleoperation (hand motion, scaled at the tool tip)
  w/s : forward / back  (+x / -x)      u/o : roll  + / -  (about x)
  a/d : left / right    (+y / -y)      i/k : pitch + / -  (about y)
  r/f : up / down       (+z / -z)      j/l : yaw   + / -  (about z)
  n/m : open / close the jaw           space : clutch on / off
  +/- : step size x1.25 / x0.8         Ctrl-C : quit (the arm holds)
"""


class KeyboardInput:
    """Integrates key presses into a hand pose (each press = one step)."""

    def __init__(self, step=0.005, angle_step=0.05, jaw_step=0.1):
        self.step = float(step)
        self.angle_step = float(angle_step)
        self.jaw_step = float(jaw_step)
        self.factor = 1.0
        self.position = np.zeros(3)
        self.orientation = IDENTITY.copy()
        self.jaw = 0.0
        self.clutch = False

    def press(self, key):
        """Apply one key; return a short description of what it did, or None if unknown."""
        action = KEY_MAP.get(key.lower() if key.isalpha() else key)
        if action is None:
            return None
        kind, axis, sign = action
        if kind == 'move':
            self.position[axis] += sign * self.step * self.factor
            return f'move {"xyz"[axis]} {sign * self.step * self.factor * 1000:+.1f} mm'
        if kind == 'rotate':
            rotvec = np.zeros(3)
            rotvec[axis] = sign * self.angle_step * self.factor
            self.orientation = quat_normalize(
                quat_multiply(quat_from_rotvec(rotvec), self.orientation))
            return f'rotate about {"xyz"[axis]} {math.degrees(rotvec[axis]):+.1f} deg'
        if kind == 'jaw':
            self.jaw = min(max(self.jaw + sign * self.jaw_step, JAW_LIMITS[0]), JAW_LIMITS[1])
            return f'jaw {math.degrees(self.jaw):.0f} deg'
        if kind == 'clutch':
            self.clutch = not self.clutch
            return 'clutch ' + ('engaged' if self.clutch else 'released')
        self.factor = min(max(self.factor * (1.25 if sign > 0 else 0.8), 0.1), 10.0)
        return f'step x{self.factor:.2f}'

    def sample(self, t=None):
        return InputSample(self.position.copy(), self.orientation.copy(), self.jaw, self.clutch)
