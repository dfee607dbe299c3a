"""
What the arm viewer draws and how its keys act, as pure logic (no rclpy, no display).

:mod:`telesurgery_ros.nodes.arm_viewer` is the ROS adapter and
:mod:`telesurgery_ros.core.viewer_scene` the PyBullet drawing; this module decides:

- the key map: motion keys become a ``sensor_msgs/Joy`` state in the Xbox layout that
  ``input:=joy`` reads (:data:`MOTION_KEYS`, :class:`KeyJoy`), action keys become service and
  parameter calls (:data:`ACTION_KEYS`), from PyBullet keyboard events (:class:`KeyTracker`);
- the HUD text and colours (:func:`hud_lines`), the safety colour code (:data:`STATE_COLOURS`);
- the camera presets, the trail ring buffers, the frame statistics behind the fps figure;
- joint states -> URDF joints, and where a screen-fixed HUD panel sits in the world.
"""
from collections import deque
from dataclasses import dataclass, field
import math

import numpy as np
from telesurgery_ros.core import kinematics
from telesurgery_ros.core.contract import SafetyState
from telesurgery_ros.core.input_sources import JoyMap, XBOX_AXES, XBOX_BUTTONS
import transforms3d

# --- keys ------------------------------------------------------------------------------------

# PyBullet's getKeyboardEvents() state bits (pybullet.KEY_IS_DOWN, ...).
KEY_IS_DOWN, KEY_WAS_TRIGGERED, KEY_WAS_RELEASED = 1, 2, 4
# PyBullet's codes of the special keys we use (pybullet.B3G_*), by name.
SPECIAL_KEYS = {65295: 'left', 65296: 'right', 65297: 'up', 65298: 'down',
                65299: 'page_up', 65300: 'page_down'}

_JOY = JoyMap()
# key -> (Joy axis index, value) while the key is held: velocities, as a gamepad stick.
MOTION_KEYS = {
    'w': (_JOY.axis_x, +1.0), 's': (_JOY.axis_x, -1.0),
    'up': (_JOY.axis_x, +1.0), 'down': (_JOY.axis_x, -1.0),
    'a': (_JOY.axis_y, +1.0), 'd': (_JOY.axis_y, -1.0),
    'left': (_JOY.axis_y, +1.0), 'right': (_JOY.axis_y, -1.0),
    'r': (_JOY.axis_z, +1.0), 'f': (_JOY.axis_z, -1.0),
    'page_up': (_JOY.axis_z, +1.0), 'page_down': (_JOY.axis_z, -1.0),
    'q': (_JOY.axis_roll, +1.0), 'e': (_JOY.axis_roll, -1.0),
}
# key -> Joy button index while the key is held.
BUTTON_KEYS = {'n': _JOY.button_jaw_open, 'm': _JOY.button_jaw_close}
CLUTCH_KEY = ' '                  # toggles the clutch button (held while on)
CLUTCH_BUTTON = _JOY.button_clutch
# key -> action of the viewer itself (services and parameters of the other nodes).
ACTION_KEYS = {
    'b': 'blackout',              # network/blackout (std_srvs/SetBool), toggled
    'x': 'estop',                 # safety/estop (std_srvs/Trigger)
    'c': 'reset',                 # safety/reset (std_srvs/Trigger)
    'p': 'profile_next',          # network_relay profile, via its set_parameters service
    'o': 'profile_previous',
    'v': 'camera',                # next camera preset
}
ACTIONS = tuple(dict.fromkeys(ACTION_KEYS.values()))

# The key map as the HUD shows it: (keys, what they do).
KEY_HELP = (
    ('w/s a/d r/f', 'move hand x/y/z (arrows, PgUp/PgDn too)'),
    ('q/e', 'roll'),
    ('n/m', 'jaw open/close'),
    ('space', 'clutch on/off'),
    ('b', 'blackout on/off'),
    ('x', 'E-STOP'),
    ('c', 'reset'),
    ('p/o', 'network profile next/previous'),
    ('v', 'camera view'),
)


def key_name(code):
    """Return the name of a PyBullet key code: its character, or the special key's name."""
    if code in SPECIAL_KEYS:
        return SPECIAL_KEYS[code]
    if 32 <= code < 127:
        return chr(code).lower()
    return None


class KeyTracker:
    """
    Held and pressed keys from successive ``getKeyboardEvents()`` polls.

    A press and release between two polls arrives as one state (triggered + released), and
    a slow poll can even miss the trigger bit and report only the release: both count as a
    press, so a tapped action key is never lost.
    """

    def __init__(self):
        self.held = set()

    def update(self, events):
        """Apply one poll ``{code: state}``; return the names of the keys pressed since."""
        pressed = []
        for code, state in sorted(events.items()):
            name = key_name(code)
            if name is None:
                continue
            if state & KEY_WAS_TRIGGERED:
                pressed.append(name)
            elif state & KEY_WAS_RELEASED and name not in self.held:
                pressed.append(name)          # the trigger was missed
            if state & KEY_WAS_RELEASED:
                self.held.discard(name)
            elif state & KEY_IS_DOWN:
                self.held.add(name)
        return pressed

    def active(self, pressed):
        """Keys to act on as held this frame: held ones, and ones tapped since the last poll."""
        return self.held | set(pressed)


class KeyJoy:
    """
    The motion keys as a ``sensor_msgs/Joy`` state (Xbox layout, like joy_node publishes).

    :meth:`update` returns ``(axes, buttons)`` to publish, or None. It publishes while the
    state is not neutral (a key held, or the clutch on) and ``neutral_repeats`` times after
    it became neutral, then stays quiet, so a real gamepad on the same topic is not fought.
    """

    def __init__(self, neutral_repeats=3):
        self.neutral_repeats = int(neutral_repeats)
        self.clutch = False
        self._quiet_left = 0

    def state(self, active):
        axes = [0.0] * len(XBOX_AXES)
        buttons = [0] * len(XBOX_BUTTONS)
        for key in active:
            if key in MOTION_KEYS:
                index, value = MOTION_KEYS[key]
                axes[index] = max(-1.0, min(1.0, axes[index] + value))
            elif key in BUTTON_KEYS:
                buttons[BUTTON_KEYS[key]] = 1
        if self.clutch:
            buttons[CLUTCH_BUTTON] = 1
        return axes, buttons

    def update(self, active, pressed):
        """Apply this frame's keys; return the Joy ``(axes, buttons)`` to publish, or None."""
        if CLUTCH_KEY in pressed:
            self.clutch = not self.clutch
        axes, buttons = self.state(active)
        if any(axes) or any(buttons):
            self._quiet_left = self.neutral_repeats
            return axes, buttons
        if self._quiet_left > 0:
            self._quiet_left -= 1
            return axes, buttons
        return None


class JoyRepeat:
    """
    Keep a held key's ``console/joy`` stream steady when frames are slow.

    The viewer renders at idle priority, so on a busy machine its frames (and with them its
    key polls) can come seconds apart, while ``master_console input:=joy`` stops the hand
    after ``joy.timeout`` without a Joy message. Between frames the last non-neutral state
    is published again every ``period``, but only while the keys were read at most
    ``hold_timeout`` ago: a frozen viewer stops the stream, and the console's timeout stops
    the hand. Neutral states are never repeated (a real gamepad is not fought).
    """

    def __init__(self, period, hold_timeout):
        self.period = float(period)
        self.hold_timeout = float(hold_timeout)
        self._state = None           # (axes, buttons) last published, None when neutral
        self._published = -math.inf
        self._polled = -math.inf

    def polled(self, now):
        """Record that the frame loop read the keys at ``now``."""
        self._polled = now

    def published(self, now, axes, buttons):
        """Record the state the frame loop published at ``now``."""
        self._published = now
        self._state = (list(axes), list(buttons)) if (any(axes) or any(buttons)) else None

    def due(self, now):
        """Return the ``(axes, buttons)`` to publish again now, or None."""
        if (self._state is None or now - self._published < self.period
                or now - self._polled > self.hold_timeout):
            return None
        self._published = now
        return self._state


def actions(pressed):
    """Return the viewer actions the keys pressed this frame ask for, in order."""
    return [ACTION_KEYS[k] for k in pressed if k in ACTION_KEYS]


def cycle(names, current, step):
    """Return the name ``step`` places after ``current`` in ``names`` (wrapping around)."""
    if not names:
        return None
    if current not in names:
        return names[0] if step > 0 else names[-1]
    return names[(names.index(current) + step) % len(names)]


# --- joints ------------------------------------------------------------------------------

JAW_JOINTS = ('jaw_left', 'jaw_right')


def urdf_joint_targets(names, positions):
    """
    Map a JointState (``names``, ``positions``) to URDF joint positions.

    The arm's six joints keep their names; the jaw opening ``jaw`` splits into the two
    fingers (+jaw/2, -jaw/2) as in the simulation. Unknown names and non-finite values are
    left out (the joint keeps its last pose).
    """
    targets = {}
    for name, value in zip(names, positions):
        value = float(value)
        if not math.isfinite(value):
            continue
        if name == kinematics.JAW_NAME:
            targets[JAW_JOINTS[0]] = 0.5 * value
            targets[JAW_JOINTS[1]] = -0.5 * value
        elif name in kinematics.JOINT_NAMES:
            targets[name] = value
    return targets


def arm_targets(joints, jaw):
    """URDF joint positions of six joints and a jaw opening (a ghost posed by IK)."""
    return urdf_joint_targets((*kinematics.JOINT_NAMES, kinematics.JAW_NAME),
                              (*[float(v) for v in joints[:6]], float(jaw)))


# --- what the HUD shows -------------------------------------------------------------------

WHITE = (235, 238, 242)
GREY = (150, 158, 168)
STATE_COLOURS = {
    SafetyState.NOMINAL: (60, 205, 90),       # green
    SafetyState.DEGRADED: (255, 191, 0),      # amber
    SafetyState.HOLD: (255, 120, 20),         # orange
    SafetyState.ESTOP: (235, 45, 45),         # red
}
UNKNOWN_COLOUR = GREY
OK_COLOUR = (120, 200, 255)
ERROR_COLOUR = (255, 110, 110)
# Ghost colours in order of the ghosts parameter (RGB 0-1; alpha is the ghost_alpha
# parameter): cyan for the hand, magenta for the prediction, then more.
GHOST_COLOURS = ((0.0, 0.85, 1.0), (1.0, 0.25, 0.9), (0.55, 1.0, 0.2), (1.0, 0.85, 0.1))
MEASURED_TRAIL_COLOUR = (1.0, 0.55, 0.0)


def rgb255(colour):
    return tuple(int(round(255 * c)) for c in colour[:3])


@dataclass
class GhostInfo:
    """One ghost as the HUD lists it."""

    topic: str
    colour: tuple
    status: str            # 'live', 'stale', 'no publisher', 'never published'


@dataclass
class HudInputs:
    """Everything the status panel shows; None where nothing has arrived (shown as '-')."""

    view: str = 'patient'
    camera: str = 'endoscope'
    profile: str = None
    blackout: bool = False
    outage: bool = False
    rtt_p50_ms: float = None
    delay_ms: dict = field(default_factory=dict)     # direction -> one-way delay p50 (ms)
    loss: dict = field(default_factory=dict)         # direction -> loss ratio 0..1
    safety: object = None                            # contract.SafetyStatus
    force_n: float = None
    scale: float = None
    physics_percent: float = None
    fps: float = None
    fps_target: float = 30.0
    clutch: bool = False
    ghosts: list = field(default_factory=list)       # GhostInfo
    messages: list = field(default_factory=list)     # (age s, text, ok)


SWATCH = '\u25a0'                # a span of this text is drawn as a filled square


@dataclass(frozen=True)
class HudLine:
    """One HUD line: a style, a label (grey, in the label column) and coloured spans."""

    style: str             # 'title', 'state' (large), 'text' or 'small'
    label: str
    spans: tuple           # ((text, (r, g, b)), ...); text SWATCH is a colour square


def _ms(value):
    return '-' if value is None or not math.isfinite(value) else f'{value:.1f} ms'


def _percent(value):
    return '-' if value is None or not math.isfinite(value) else f'{100.0 * value:.1f} %'


def _per_direction(values, fmt):
    if not values:
        return '-'
    return '    '.join(f'{label} {fmt(values.get(direction))}'
                       for direction, label in (('forward', 'to arm'), ('backward', 'back')))


def wrap(text, width):
    """Split ``text`` into lines of at most ``width`` characters, at spaces where possible."""
    lines = []
    for paragraph in text.split('\n'):
        line = ''
        for word in paragraph.split(' '):
            while len(word) > width:
                if line:
                    lines.append(line)
                    line = ''
                lines.append(word[:width])
                word = word[width:]
            candidate = f'{line} {word}' if line else word
            if len(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def hud_lines(hud, width=44):
    """
    Build the status panel as :class:`HudLine` s, top to bottom.

    ``width`` is the number of characters a text line holds: the safety reason and the
    action results wrap to it.
    """
    amber, red = STATE_COLOURS[SafetyState.DEGRADED], STATE_COLOURS[SafetyState.ESTOP]
    lines = [HudLine('title', '', (('TELESURGERY', WHITE),
                                   (f'   {hud.view} view, {hud.camera} camera', GREY)))]
    network = [(hud.profile or '-', WHITE)]
    if hud.blackout:
        network.append(('   BLACKOUT', red))
    elif hud.outage:
        network.append(('   OUTAGE', STATE_COLOURS[SafetyState.HOLD]))
    lines += [
        HudLine('text', 'network', tuple(network)),
        HudLine('text', 'RTT p50', ((_ms(hud.rtt_p50_ms), WHITE), ('  console clock', GREY))),
        HudLine('text', 'one-way', ((_per_direction(hud.delay_ms, _ms), WHITE),)),
        HudLine('text', 'loss', ((_per_direction(hud.loss, _percent), WHITE),)),
    ]
    if hud.safety is None:
        lines.append(HudLine('state', '', (('NO SAFETY STATE', UNKNOWN_COLOUR),)))
    else:
        colour = STATE_COLOURS[hud.safety.state]
        lines.append(HudLine('state', '', ((hud.safety.state.name, colour),)))
        for part in wrap(hud.safety.reason, width)[:3] if hud.safety.reason else ():
            lines.append(HudLine('text', '', ((part, colour),)))
    force = '-' if hud.force_n is None or not math.isfinite(hud.force_n) else \
        f'{hud.force_n:.2f} N'
    scale = '-' if hud.scale is None else f'{hud.scale:g}'
    lines.append(HudLine('text', 'force', ((force, WHITE), ('   scale ', GREY), (scale, WHITE),
                                           ('   clutch ', GREY),
                                           ('ON', amber) if hud.clutch else ('off', WHITE))))
    physics = '-' if hud.physics_percent is None else f'{hud.physics_percent:.1f} %'
    fps = '-' if hud.fps is None else f'{hud.fps:.1f}'
    lines += [
        HudLine('text', 'arm', ((f'physics {physics} of real time', WHITE),)),
        HudLine('text', 'viewer', ((f'{fps} fps', WHITE),
                                   (f'  target {hud.fps_target:g}', GREY))),
    ]
    for ghost in hud.ghosts:
        lines.append(HudLine('small', 'ghost', ((SWATCH, rgb255(ghost.colour)),
                                                (f' {ghost.topic}  ', WHITE),
                                                (ghost.status, GREY))))
    lines.append(HudLine('small', 'trails', (
        (SWATCH, rgb255(GHOST_COLOURS[0])), (' commanded   ', WHITE),
        (SWATCH, rgb255(MEASURED_TRAIL_COLOUR)), (' measured tool tip', WHITE))))
    for age, text, ok in hud.messages:
        for i, part in enumerate(wrap(f'{text} ({age:.0f} s ago)', width)[:2]):
            lines.append(HudLine('small', 'last' if i == 0 else '',
                                 ((part, OK_COLOUR if ok else ERROR_COLOUR),)))
    return lines


def key_help_lines(columns=3):
    """Build the key map as HUD lines (keys amber, what they do white)."""
    amber = STATE_COLOURS[SafetyState.DEGRADED]
    lines = []
    for start in range(0, len(KEY_HELP), columns):
        spans = []
        for keys, what in KEY_HELP[start:start + columns]:
            spans += [(keys, amber), (f'  {what}      ', WHITE)]
        lines.append(HudLine('small', '', tuple(spans)))
    return lines


# --- camera --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraPreset:
    """A PyBullet debug-visualizer camera: distance (m), yaw and pitch (deg), target (world)."""

    distance: float
    yaw: float
    pitch: float
    target: tuple


# The RCM (the port) is at world (0, 0, 1.05) and the tool tip at home 0.12 m below it, just
# above the task board: 'endoscope' looks down on the instrument and the board from close by,
# as a laparoscope through a second port does; 'overview' shows the arm, patient and table.
CAMERA_PRESETS = {
    'endoscope': CameraPreset(0.14, 20.0, -50.0, (0.0, 0.0, 0.928)),   # eye under the wall
    'overview': CameraPreset(1.0, 150.0, -28.0, (-0.05, -0.25, 0.9)),
}
CAMERAS = tuple(CAMERA_PRESETS)


def panel_pose(view_matrix, projection_matrix, window, rect, depth):
    """
    Place a screen-fixed panel: the world pose and size of a quad covering ``rect``.

    ``view_matrix``/``projection_matrix`` are PyBullet's 16-float column-major matrices,
    ``window`` is (width, height) in pixels, ``rect`` is (x, y, width, height) in pixels from
    the window's top-left corner and ``depth`` the quad's distance in front of the camera (m).
    Return (centre[3], quaternion x, y, z, w, half width, half height), the quad's own x axis
    to the screen's right, y up, z towards the camera.
    """
    view = np.asarray(view_matrix, float).reshape(4, 4).T          # world -> camera
    proj = np.asarray(projection_matrix, float).reshape(4, 4).T
    camera = np.linalg.inv(view)
    right, up, back, eye = camera[:3, 0], camera[:3, 1], camera[:3, 2], camera[:3, 3]
    half_h = depth / proj[1, 1]
    half_w = depth / proj[0, 0]
    width, height = window
    x, y, w, h = rect
    # Pixel -> normalised device coordinates (-1..1, y up).
    cx = (x + 0.5 * w) / width * 2.0 - 1.0
    cy = 1.0 - (y + 0.5 * h) / height * 2.0
    centre = eye - back * depth + right * (cx * half_w) + up * (cy * half_h)
    rotation = np.column_stack([right, up, back])
    w_, x_, y_, z_ = transforms3d.quaternions.mat2quat(rotation)
    return (centre, np.array([x_, y_, z_, w_]), half_w * w / width, half_h * h / height)


# --- trails and frames -------------------------------------------------------------------

class Ring:
    """Indices of a ring of ``count`` markers: each new sample moves the oldest one."""

    def __init__(self, count):
        if count < 1:
            raise ValueError(f'a ring needs at least one marker, got {count}')
        self.count = int(count)
        self.pushed = 0

    def push(self):
        """Return the index of the marker to move to the newest sample."""
        index = self.pushed % self.count
        self.pushed += 1
        return index


class Every:
    """Due every ``period`` seconds on a given clock (skips, never bursts, when late)."""

    def __init__(self, period):
        self.period = float(period)
        self.next = None

    def due(self, now):
        """Whether the next period has begun at ``now`` (a late call restarts the schedule)."""
        if self.next is not None and now < self.next:
            return False
        late = self.next is None or now - self.next >= self.period
        self.next = now + self.period if late else self.next + self.period
        return True


class FrameStats:
    """
    The viewer's frame figures: achieved fps, frame time, frames dropped.

    A frame is due every ``1 / fps`` s; when one takes longer, the slots it overran are
    dropped, not caught up (the next frame shows the newest state). ``window`` is the span
    (s) behind the fps figure.
    """

    def __init__(self, fps, window=2.0):
        self.period = 1.0 / float(fps)
        self.window = float(window)
        self.frames = 0
        self.dropped = 0
        self._starts = deque()
        self._durations = deque(maxlen=300)
        self._last_start = None

    def frame(self, start, end):
        """Record one frame that began at ``start`` and ended at ``end`` (seconds)."""
        if self._last_start is not None:
            missed = int((start - self._last_start) / self.period + 1e-6) - 1
            self.dropped += max(0, missed)
        self._last_start = start
        self.frames += 1
        self._starts.append(start)
        self._durations.append(end - start)
        while self._starts and self._starts[0] < start - self.window:
            self._starts.popleft()

    def fps(self, now):
        """Frames per second over the last ``window`` s (None before two frames)."""
        starts = [s for s in self._starts if s >= now - self.window]
        if len(starts) < 2:
            return None
        span = max(now - starts[0], starts[-1] - starts[0])
        return (len(starts) - 1) / span if span > 0 else None

    def frame_time(self, percentile):
        """Frame duration percentile (s), None before the first frame."""
        if not self._durations:
            return None
        return float(np.percentile(np.asarray(self._durations), percentile))


def ghost_status(received, age, publishers, stale_after):
    """
    Return the state of a ghost's topic: 'live', 'stale', 'no publisher' or 'never published'.

    ``received`` counts the poses that arrived, ``age`` is the newest one's age (s),
    ``publishers`` how many publishers the graph shows.
    """
    if received:
        return 'live' if age is not None and age <= stale_after else 'stale'
    return 'never published' if publishers else 'no publisher'


# --- what the viewer costs the others -------------------------------------------------------

def _number(values, key):
    try:
        value = float(values[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class LoopFigures:
    """
    The slave's control-loop reports and the viewer's fps over a span of time.

    Feed it every ``/diagnostics`` status as (name, {key: value text}); it keeps the
    ``<slave>: control loop`` figures (``physics_rate_hz`` / ``nominal_rate_hz``, the
    cumulative ``overruns``, ``period_p99_ms``) and the ``<viewer>: render`` ``fps``.
    """

    def __init__(self):
        self.physics = []           # percent of real time, one per report
        self.period_p99_ms = []
        self.overrun_fraction = []
        self.overruns = []          # the cumulative counter, as reported
        self.fps = []

    def on_status(self, name, values):
        if name.endswith(': control loop'):
            physics = _number(values, 'physics_rate_hz')
            nominal = _number(values, 'nominal_rate_hz')
            if physics is not None and nominal:
                self.physics.append(100.0 * physics / nominal)
            for key, series in (('period_p99_ms', self.period_p99_ms),
                                ('overrun_fraction', self.overrun_fraction),
                                ('overruns', self.overruns)):
                value = _number(values, key)
                if value is not None:
                    series.append(value)
        elif name.endswith(': render'):
            fps = _number(values, 'fps')
            if fps is not None:
                self.fps.append(fps)

    def summary(self):
        """Return the span's figures (None where there were no reports)."""
        def stat(series, how):
            return how(series) if series else None
        return {
            'reports': len(self.physics),
            'physics_percent_mean': stat(self.physics, lambda s: float(np.mean(s))),
            'physics_percent_min': stat(self.physics, min),
            'overruns': (self.overruns[-1] - self.overruns[0]) if len(self.overruns) > 1
            else None,
            'overrun_fraction_mean': stat(self.overrun_fraction, lambda s: float(np.mean(s))),
            'period_p99_ms_max': stat(self.period_p99_ms, max),
            'viewer_fps_mean': stat(self.fps, lambda s: float(np.mean(s))),
            'viewer_fps_min': stat(self.fps, min),
        }
