"""Unit tests of the round-trip time and tracking figures (no rclpy, injected clock)."""
import math

import numpy as np
import pytest

from telesurgery_ros.core.rtt import FeedbackMonitor, pose_error, RttMonitor, status_line
from telesurgery_ros.core.teleop import quat_from_rotvec


class FakeClock:
    """The console's clock, advanced by hand."""

    def __init__(self, start=1000.0):
        self.t = start

    def now(self):
        return self.t


def test_rtt_is_exactly_the_echo_delay_on_the_console_clock():
    clock = FakeClock()
    monitor = RttMonitor(window=100)
    delays = [0.030, 0.031, 0.045, 0.030, 0.090]
    for i, delay in enumerate(delays):
        stamp = clock.now()                 # the console stamps a command ...
        clock.t += delay                    # ... and its echo comes back this much later
        assert monitor.on_echo(stamp, clock.now()) == pytest.approx(delay, abs=1e-12)
        clock.t += 0.002
    summary = monitor.summary()
    assert summary['count'] == len(delays)
    assert summary['min'] == pytest.approx(0.030, abs=1e-12)
    assert summary['max'] == pytest.approx(0.090, abs=1e-12)
    assert summary['p50'] == pytest.approx(0.031, abs=1e-12)
    assert summary['p99'] == pytest.approx(np.percentile(delays, 99), abs=1e-12)
    assert summary['last'] == pytest.approx(0.090, abs=1e-12)


def test_only_the_first_echo_of_a_stamp_counts():
    monitor = RttMonitor()
    assert monitor.on_echo(10.000, 10.040) == pytest.approx(0.040)
    # The slave repeats the last stamp while no newer command arrives: not a longer RTT.
    assert monitor.on_echo(10.000, 10.060) is None
    # An older stamp (reordered by the network) and a stamp from the future do not count.
    assert monitor.on_echo(9.990, 10.070) is None
    assert monitor.on_echo(10.200, 10.100) is None
    assert monitor.on_echo(float('nan'), 10.100) is None
    assert monitor.on_echo(10.050, 10.100) == pytest.approx(0.050)
    assert monitor.summary()['count'] == 2 and monitor.summary()['ignored'] == 4


def test_window_keeps_only_the_latest_round_trips():
    monitor = RttMonitor(window=10)
    for i in range(100):
        monitor.on_echo(float(i), i + (0.5 if i < 90 else 0.01))
    assert monitor.summary()['max'] == pytest.approx(0.01)
    assert monitor.percentile(50) == pytest.approx(0.01)
    assert math.isnan(RttMonitor().percentile(50))
    with pytest.raises(ValueError):
        RttMonitor(window=0)


def test_tracking_error_force_and_command_error():
    feedback = FeedbackMonitor()
    assert all(math.isnan(v) for v in feedback.tracking_error())
    q0 = [0.0, 0.0, 0.0, 1.0]
    feedback.on_setpoint([0.0, 0.0, -0.1], q0)
    feedback.on_measured([0.003, 0.004, -0.1], quat_from_rotvec([0.0, 0.0, 0.1]))
    distance, angle = feedback.tracking_error()
    assert distance == pytest.approx(0.005)
    assert angle == pytest.approx(0.1)
    assert feedback.command_error([0.003, 0.004, -0.11], quat_from_rotvec([0, 0, 0.1]))[0] \
        == pytest.approx(0.01)
    feedback.on_force([3.0, 0.0, -4.0])
    assert feedback.force == pytest.approx(5.0)
    assert pose_error([0, 0, 0], q0, [0, 0, 0], [0, 0, 0, -1.0]) == (0.0, 0.0)


def test_status_line_shows_the_figures():
    monitor = RttMonitor()
    monitor.on_echo(1.0, 1.0421)
    line = status_line(monitor.summary(), 0.00123, 2.5, 'NOMINAL', clutch=True)
    assert 'RTT p50  42.1 ms p99  42.1 ms' in line
    assert 'tracking  1.23 mm' in line and 'force 2.50 N' in line
    assert line.endswith('NOMINAL | CLUTCH')
    empty = status_line(RttMonitor().summary(), math.nan, None, 'HOLD')
    assert 'n/a' in empty and '\n' not in empty
