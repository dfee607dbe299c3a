"""e_pred and e_delayed from recorded streams (prediction_analysis), and the bench's pieces."""
import math

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from telesurgery_ros import prediction_analysis as analysis
from telesurgery_ros.bench import prediction as bench
from telesurgery_ros.recorder import McapRecorder
from telesurgery_ros.rosutil import make_pose_stamped, sec_to_stamp

SPEED = 0.025            # m/s along x
FORWARD, BACKWARD = 0.07, 0.065
T0 = 1_800_000_000.0     # s since the epoch, like the recordings


def arm_x(t):
    return SPEED * (t - T0)


def synthetic(ghost_error=0.0, lost=()):
    """Make a straight motion seen through a link: the ghost is the arm at arrival (+ error)."""
    commands = np.arange(T0, T0 + 4.0, 0.002)
    arrival = commands + FORWARD + 0.001 * np.sin(np.arange(commands.size))   # jitter
    keep = np.ones(commands.size, bool)
    keep[list(lost)] = False
    predicted = commands[::3]
    ghost = np.array([[arm_x(t + FORWARD) + ghost_error, 0, 0] for t in predicted])
    arm_t = np.arange(T0, T0 + 4.5, 0.005)
    arm = np.array([[arm_x(t), 0, 0] for t in arm_t])
    console_t = arm_t + BACKWARD
    return analysis.streams((predicted, ghost), (commands[keep], arrival[keep]),
                            (arm_t, arm), (console_t, arm))


def test_a_perfect_ghost_has_no_error_and_the_delayed_view_lags_one_round_trip():
    result = analysis.analyse(synthetic())
    pred, delayed = result['prediction'], result['delayed_view']
    print(f"e_pred RMS {pred['rms_m'] * 1e6:.2f} um, e_delayed RMS "
          f"{delayed['rms_m'] * 1e3:.3f} mm over {pred['samples']} samples")
    assert pred['samples'] > 500
    # Only the jitter of the arrival (+-1 ms at 25 mm/s) separates the ghost from the arm.
    assert pred['max_m'] < SPEED * 0.0011
    # The console's copy is FORWARD + BACKWARD old, plus up to one 5 ms feedback period.
    expected = SPEED * (FORWARD + BACKWARD)
    assert expected - 1e-4 < delayed['rms_m'] < expected + SPEED * 0.006
    assert result['forward_delay_ms']['p50'] == pytest.approx(FORWARD * 1e3, abs=1.0)


def test_a_constant_ghost_error_is_measured_as_such():
    result = analysis.analyse(synthetic(ghost_error=0.002))
    assert result['prediction']['rms_m'] == pytest.approx(0.002, abs=SPEED * 0.0011)
    assert result['prediction']['p95_m'] <= result['prediction']['max_m']


def test_forward_delays_interpolate_lost_commands_but_not_gaps():
    stamps = np.array([0.0, 0.002, 0.004, 0.1, 0.102])
    arrival = stamps + np.array([0.07, 0.07, 0.08, 0.07, 0.07])
    d = analysis.forward_delays([0.002, 0.003, 0.05, 0.101, 0.2], stamps, arrival)
    assert d[0] == pytest.approx(0.07)
    assert d[1] == pytest.approx(0.075)          # between two arrivals: interpolated
    assert math.isnan(d[2])                      # a 96 ms gap: no guess
    assert d[3] == pytest.approx(0.07)
    assert math.isnan(d[4])                      # after the last command
    # A duplicated command counts with its first arrival.
    d = analysis.forward_delays([0.0], np.array([0.0, 0.0]), np.array([0.09, 0.07]))
    assert d[0] == pytest.approx(0.07)


def test_only_samples_while_the_arm_may_move_count():
    data = synthetic(ghost_error=0.001)
    data.safety = [(T0, 'HOLD'), (T0 + 1.0, 'NOMINAL'), (T0 + 2.0, 'DEGRADED'),
                   (T0 + 3.0, 'ESTOP')]
    series = analysis.errors(data)
    assert series['t'].min() >= T0 + 1.0 and series['t'].max() < T0 + 3.0
    everything = analysis.errors(synthetic())['t'].size
    assert 0.4 * everything < series['t'].size < 0.6 * everything


def test_settle_times_per_event():
    t = np.arange(0.0, 3.0, 0.01)
    e = np.where((t >= 1.0) & (t < 1.25), 0.003, 0.0002)
    settle = analysis.settle_times(t, e, [0.5, 1.0, 2.0], threshold=0.001)
    assert settle[0] == 0.0                    # never above the threshold before 1.0 s
    assert settle[1] == pytest.approx(0.25)
    assert settle[2] == 0.0
    assert math.isnan(analysis.settle_times(t, np.full(t.size, 0.01), [1.0], 0.001)[0])


def pose_message(stamp, x):
    return serialize_message(make_pose_stamped((x, 0.0, -0.12), (1.0, 0.0, 0.0, 0.0),
                                               'psm1_rcm', sec_to_stamp(stamp)))


def test_the_demo_recording_is_read_back_and_analysed(tmp_path):
    """Streams written as the demo writes them (raw CDR in MCAP) give the same figures."""
    data = synthetic(ghost_error=0.001)
    path = str(tmp_path / 'run.mcap')
    pose = 'geometry_msgs/msg/PoseStamped'
    with McapRecorder(path) as recorder:
        def write(topic, receive, stamp, x):
            recorder.write(topic, pose, pose_message(stamp, x), int(round(receive * 1e9)))
        for stamp, p in zip(data.predicted_stamp, data.predicted_position):
            write('/console/psm1/predicted_cp', stamp, stamp, p[0])
        for stamp, arrival in zip(data.command_stamp, data.command_arrival):
            write('/psm1/servo_cp', arrival, stamp, arm_x(stamp))
        for stamp, p in zip(data.arm_stamp, data.arm_position):
            write('/psm1/measured_cp', stamp + 0.0005, stamp, p[0])
        for receive, p in zip(data.console_time, data.console_position):
            write('/console/psm1/measured_cp', receive, receive - BACKWARD, p[0])
        recorder.write('/safety/state', 'std_msgs/msg/String',
                       serialize_message(String(data='NOMINAL: ok')), int(T0 * 1e9))
    loaded = analysis.load_mcap(path)
    assert loaded.safety == [(pytest.approx(T0), 'NOMINAL')]
    direct = analysis.analyse(data)
    read = analysis.analyse(loaded)
    fields, plots = analysis.demo_figures(path, 'psm1', str(tmp_path))
    assert plots == ['prediction.png'] and (tmp_path / 'prediction.png').stat().st_size > 0
    for key in ('prediction', 'delayed_view'):
        for figure in ('rms_m', 'p95_m', 'max_m'):
            # Stamps travel as integer nanoseconds: sub-microsecond differences.
            assert read[key][figure] == pytest.approx(direct[key][figure], abs=1e-6)
            assert fields[key][figure] == read[key][figure]
    lines = analysis.text_lines(fields)
    assert lines[0].startswith('prediction     e_pred RMS 1.00 mm')


def test_press_script_and_contact_intervals():
    assert bench.press_depth(0.0) == 0.0
    assert bench.press_depth(bench.PRESS_START + 2.0) == 1.0          # holding pressed
    assert bench.press_depth(bench.PRESS_START + 4.5) == 0.0          # resting between
    times = np.arange(0.0, 2.0, 0.005)
    flags = (times > 0.5) & (times < 1.5) & ~((times > 0.9) & (times < 0.92))
    flags |= (times > 1.8) & (times < 1.82)                           # a flicker: dropped
    spans = bench.intervals(times, flags)
    assert len(spans) == 1
    assert spans[0][0] == pytest.approx(0.505) and spans[0][1] == pytest.approx(1.5)


def test_orientation_errors_are_measured_when_recorded():
    """A ghost rolled 2 degrees about the shaft: its angle error, and none for the delayed view."""
    data = synthetic()
    home = np.array([1.0, 0.0, 0.0, 0.0])                       # x y z w
    half = math.radians(2.0) / 2.0
    rolled = np.array([math.cos(half), 0.0, 0.0, -math.sin(half)])   # Rx(pi) * Rz(2 deg)
    data.predicted_orientation = np.tile(rolled, (data.predicted_stamp.size, 1))
    data.arm_orientation = np.tile(home, (data.arm_stamp.size, 1))
    data.console_orientation = np.tile(-home, (data.console_time.size, 1))   # same rotation
    result = analysis.analyse(data)
    assert result['prediction']['rms_deg'] == pytest.approx(2.0, abs=1e-9)
    assert result['delayed_view']['max_deg'] == pytest.approx(0.0, abs=1e-6)
    assert 'angle RMS 2.00 deg' in analysis.text_lines(result)[0]
    assert 'rms_deg' not in analysis.analyse(synthetic())['prediction']
