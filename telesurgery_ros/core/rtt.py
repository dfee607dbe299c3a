"""
Round-trip time from echoed stamps, and the tracking figures the surgeon sees.

The slave's ``setpoint_cp`` carries the stamp of the master command it servoes to, so the
console measures the round trip on its own clock: ``rtt = now - echoed_stamp``, with no clock
synchronisation between the sites. Only the first echo of each stamp counts: the slave repeats
the last stamp while no newer command arrives, and those repeats would read as an ever longer
round trip. Pure logic: ``now`` is passed in (seconds on the console's clock).
"""
import collections
import math

import numpy as np

from telesurgery_ros.core.teleop import quat_angle


class RttMonitor:
    """Rolling round-trip statistics over the last ``window`` echoes."""

    def __init__(self, window=1000):
        if window < 1:
            raise ValueError(f'window must be >= 1, got {window!r}')
        self.samples = collections.deque(maxlen=int(window))
        self.last_stamp = None
        self.count = 0
        self.ignored = 0

    def on_echo(self, stamp, now):
        """
        Record the echo of the command stamped ``stamp`` (s) received at ``now`` (s).

        Return the round-trip time (s), or None when the echo does not count (a repeat, an
        older stamp than one already seen, or a stamp later than ``now``).
        """
        if not (math.isfinite(stamp) and math.isfinite(now)) or stamp > now or (
                self.last_stamp is not None and stamp <= self.last_stamp):
            self.ignored += 1
            return None
        self.last_stamp = stamp
        rtt = now - stamp
        self.samples.append(rtt)
        self.count += 1
        return rtt

    def percentile(self, q):
        """Return the window's value at percentile ``q`` (0-100) in s; NaN when empty."""
        if not self.samples:
            return math.nan
        return float(np.percentile(np.fromiter(self.samples, float), q))

    def summary(self):
        """p50, p99, min, max (s) of the window and the counts."""
        if not self.samples:
            nan = math.nan
            return {'p50': nan, 'p99': nan, 'min': nan, 'max': nan, 'last': nan,
                    'count': self.count, 'ignored': self.ignored}
        data = np.fromiter(self.samples, float)
        p50, p99 = np.percentile(data, [50.0, 99.0])
        return {'p50': float(p50), 'p99': float(p99), 'min': float(data.min()),
                'max': float(data.max()), 'last': float(data[-1]), 'count': self.count,
                'ignored': self.ignored}


def pose_error(position_a, orientation_a, position_b, orientation_b):
    """(distance in m, angle in rad) between two poses."""
    difference = np.asarray(position_a, float) - np.asarray(position_b, float)
    distance = float(np.linalg.norm(difference))
    return distance, quat_angle(orientation_a, orientation_b)


class FeedbackMonitor:
    """Latest setpoint, measured pose and force from the arm; tracking and force figures."""

    def __init__(self):
        self.setpoint = None
        self.measured = None
        self.force = None

    def on_setpoint(self, position, orientation):
        self.setpoint = (np.asarray(position, float), np.asarray(orientation, float))

    def on_measured(self, position, orientation):
        self.measured = (np.asarray(position, float), np.asarray(orientation, float))

    def on_force(self, force):
        self.force = float(np.linalg.norm(np.asarray(force, float)))

    def tracking_error(self):
        """(m, rad) between the arm's setpoint and its measured pose, or (NaN, NaN)."""
        if self.setpoint is None or self.measured is None:
            return math.nan, math.nan
        return pose_error(*self.setpoint, *self.measured)

    def command_error(self, position, orientation):
        """(m, rad) between a console command and the arm as the console last saw it."""
        if self.measured is None:
            return math.nan, math.nan
        return pose_error(position, orientation, *self.measured)


def status_line(rtt, tracking, force, state, clutch=False, scale=None, prediction=None):
    """
    Format the one-line live status: RTT p50/p99, tracking error, force, safety state.

    ``scale``: the active motion scaling; ``prediction``: the predictor's state (both shown
    when given).
    """
    def ms(value):
        return '  n/a' if math.isnan(value) else f'{value * 1000:5.1f}'

    error = '  n/a' if math.isnan(tracking) else f'{tracking * 1000:5.2f}'
    newton = ' n/a' if force is None or math.isnan(force) else f'{force:4.2f}'
    return (f'RTT p50 {ms(rtt["p50"])} ms p99 {ms(rtt["p99"])} ms | tracking {error} mm | '
            f'force {newton} N | {state}'
            + ('' if scale is None else f' | scale {scale:.3g}')
            + ('' if prediction is None else f' | ghost {prediction}')
            + (' | CLUTCH' if clutch else ''))
