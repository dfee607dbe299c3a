"""
The contract between the nodes: topic names, frames and the safety state encoding.

See ``shared/design/ARCHITECTURE.md``. Topic names are relative so that a ROS namespace and
remapping work; ``arm`` is the arm namespace (default ``psm1``).
"""
from dataclasses import dataclass
import enum

DEFAULT_ARM = 'psm1'
CONSOLE_PREFIX = 'console'


def arm_topics(arm=DEFAULT_ARM):
    """Return the patient-side topic names of one arm, by role."""
    return {
        'servo_cp': f'{arm}/servo_cp',
        'jaw_servo_jp': f'{arm}/jaw/servo_jp',
        'measured_js': f'{arm}/measured_js',
        'measured_cp': f'{arm}/measured_cp',
        'setpoint_cp': f'{arm}/setpoint_cp',
        'measured_cf': f'{arm}/measured_cf',
    }


def console_topic(topic):
    """Return the surgeon-side copy of a patient-side topic (``console/<topic>``)."""
    return f'{CONSOLE_PREFIX}/{topic}'


# Roles relayed console -> patient (forward) and patient -> console (backward).
FORWARD_ROLES = ('servo_cp', 'jaw_servo_jp')
BACKWARD_ROLES = ('measured_cp', 'setpoint_cp', 'measured_cf', 'measured_js')


def predicted_topic(arm=DEFAULT_ARM):
    """Return the console's predicted arm pose topic (``console/<arm>/predicted_cp``)."""
    return console_topic(f'{arm}/predicted_cp')


# Hand input as sensor_msgs/Joy, from the viewer's keys or a joy_node (input:=joy).
JOY_TOPIC = 'console/joy'

SAFETY_STATE_TOPIC = 'safety/state'
ESTOP_SERVICE = 'safety/estop'
RESET_SERVICE = 'safety/reset'
NETWORK_STATS_TOPIC = 'network/stats'
BLACKOUT_SERVICE = 'network/blackout'      # std_srvs/SetBool: true cuts both directions
DIAGNOSTICS_TOPIC = '/diagnostics'

# The watchdog publishes safety/state at this rate and at once on every transition; the
# slave holds on its own when no state arrived for SAFETY_SILENCE_TIMEOUT.
SAFETY_STATE_RATE = 50.0                   # Hz
SAFETY_SILENCE_TIMEOUT = 0.1               # s


def frames(arm=DEFAULT_ARM):
    """Return the frame names of one arm (REP 103, right-handed, metres)."""
    return {
        'world': 'world',
        'base': f'{arm}_base',
        'rcm': f'{arm}_rcm',
        'tool_tip': f'{arm}_tool_tip',
    }


class SafetyState(enum.IntEnum):
    """Safety states, ordered by severity: a larger value is never less safe."""

    NOMINAL = 0
    DEGRADED = 1
    HOLD = 2
    ESTOP = 3

    @property
    def allows_motion(self):
        return self in (SafetyState.NOMINAL, SafetyState.DEGRADED)


@dataclass(frozen=True)
class SafetyStatus:
    """What travels on ``safety/state`` (std_msgs/String): ``'<STATE>: <reason>'``."""

    state: SafetyState
    reason: str = ''

    def encode(self):
        return f'{self.state.name}: {self.reason}' if self.reason else self.state.name

    @classmethod
    def decode(cls, text):
        """Parse a ``safety/state`` string; raise ValueError for anything malformed."""
        name, _sep, reason = text.partition(':')
        try:
            state = SafetyState[name.strip()]
        except KeyError:
            raise ValueError(
                f'unknown safety state {name.strip()!r} in {text!r}; '
                f'expected one of {", ".join(s.name for s in SafetyState)}') from None
        return cls(state, reason.strip())


# --- the RCM frame and the home pose -------------------------------------------------------
# ``psm1_rcm``: origin at the remote centre of motion (the incision port); axes parallel to
# ``world`` (x forward, y left, z up, REP 103). The instrument enters the patient downwards,
# so tool-tip positions have z < 0. The tool-tip frame's z axis points along the shaft,
# away from the RCM (out of the jaw); at home it points straight down.
HOME_POSITION = (0.0, 0.0, -0.12)          # m, tool tip in psm1_rcm
HOME_ORIENTATION = (1.0, 0.0, 0.0, 0.0)    # quaternion x, y, z, w: tool z axis = -z of RCM
HOME_JAW = 0.0                             # rad
