"""
Surgeon input sources: scripted trajectories, CSV replay, a keyboard key map and a gamepad.

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


# --- gamepad (sensor_msgs/Joy) ----------------------------------------------------------

# The layout joy_node (ros-drivers/joystick_drivers ``joy``, SDL joystick API) publishes for
# an Xbox 360 / One wired controller under Linux (xpad driver): 8 axes, 11 buttons. joy_node
# negates SDL's axes so that stick up and stick left are +1 (forward and left, REP 103).
# The viewer's keys publish the same layout, so one mapping serves both.
XBOX_AXES = ('left_stick_x', 'left_stick_y', 'left_trigger', 'right_stick_x',
             'right_stick_y', 'right_trigger', 'dpad_x', 'dpad_y')
XBOX_BUTTONS = ('a', 'b', 'x', 'y', 'lb', 'rb', 'back', 'start', 'guide', 'left_stick',
                'right_stick')


def xbox_axis(name):
    return XBOX_AXES.index(name)


def xbox_button(name):
    return XBOX_BUTTONS.index(name)


@dataclass(frozen=True)
class JoyMap:
    """
    Which Joy axes and buttons drive the hand, and how fast; -1 leaves one unused.

    Axes are velocities: full deflection (+-1) moves the hand at ``linear_speed`` along the
    RCM frame's x (forward), y (left) and z (up) axes, and rolls it at ``angular_speed`` about
    z (the instrument shaft at home). Held buttons: ``clutch`` engages the clutch, ``jaw_open``
    and ``jaw_close`` move the jaw at ``jaw_speed``. With no Joy message for ``timeout`` the
    hand stops and the clutch is released (a Joy source that died never keeps the hand moving).
    Defaults: the Xbox layout of joy_node (left stick x/y, right stick up/down = z, right
    stick left/right = roll, A = clutch, RB/LB = jaw open/close).
    """

    axis_x: int = xbox_axis('left_stick_y')
    axis_y: int = xbox_axis('left_stick_x')
    axis_z: int = xbox_axis('right_stick_y')
    axis_roll: int = xbox_axis('right_stick_x')
    button_clutch: int = xbox_button('a')
    button_jaw_open: int = xbox_button('rb')
    button_jaw_close: int = xbox_button('lb')
    linear_speed: float = 0.1      # m/s of the hand at full deflection (before scaling)
    angular_speed: float = 1.0     # rad/s
    jaw_speed: float = 1.0         # rad/s
    timeout: float = 0.5           # s


def _component(values, index):
    """Joy value at ``index`` (0 when unused, missing or not finite), clamped to [-1, 1]."""
    if index < 0 or index >= len(values):
        return 0.0
    value = float(values[index])
    return min(max(value, -1.0), 1.0) if math.isfinite(value) else 0.0


class JoyInput:
    """
    Integrates sensor_msgs/Joy axes (velocities) and buttons into a hand pose.

    :meth:`on_joy` takes each message with its receive time and :meth:`sample` integrates up
    to ``t`` (both on the source's clock, seconds). Pure logic: the node feeds it.
    """

    def __init__(self, mapping=None):
        self.mapping = mapping or JoyMap()
        self.position = np.zeros(3)
        self.orientation = IDENTITY.copy()
        self.jaw = 0.0
        self.axes = ()
        self.buttons = ()
        self.received = None       # source time of the newest message
        self.messages = 0
        self._t = None

    def on_joy(self, axes, buttons, t):
        """Take one Joy message (its ``axes`` and ``buttons``) received at time ``t``."""
        self.axes = tuple(axes)
        self.buttons = tuple(buttons)
        self.received = float(t)
        self.messages += 1

    def fresh(self, t):
        """Whether a Joy message arrived within ``mapping.timeout`` before ``t``."""
        return self.received is not None and t - self.received <= self.mapping.timeout

    def _button(self, index):
        return index >= 0 and index < len(self.buttons) and bool(self.buttons[index])

    def velocity(self, t):
        """Return (linear velocity[3] m/s, roll rate rad/s, jaw rate rad/s) at ``t``."""
        m = self.mapping
        if not self.fresh(t):
            return np.zeros(3), 0.0, 0.0
        linear = m.linear_speed * np.array([_component(self.axes, m.axis_x),
                                            _component(self.axes, m.axis_y),
                                            _component(self.axes, m.axis_z)])
        roll = m.angular_speed * _component(self.axes, m.axis_roll)
        jaw = m.jaw_speed * (float(self._button(m.button_jaw_open))
                             - float(self._button(m.button_jaw_close)))
        return linear, roll, jaw

    def sample(self, t):
        t = float(t)
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        linear, roll, jaw_rate = self.velocity(t)
        if dt > 0.0:
            self.position = self.position + linear * dt
            if roll:
                self.orientation = quat_normalize(quat_multiply(
                    quat_from_rotvec([0.0, 0.0, roll * dt]), self.orientation))
            self.jaw = min(max(self.jaw + jaw_rate * dt, JAW_LIMITS[0]), JAW_LIMITS[1])
        clutch = self.fresh(t) and self._button(self.mapping.button_clutch)
        return InputSample(self.position.copy(), self.orientation.copy(), self.jaw, clutch)
