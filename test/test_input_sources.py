"""Unit tests of the input sources (no rclpy): trajectories, CSV replay, keys, gamepad (Joy)."""
import math

import numpy as np
import pytest

from telesurgery_ros import resources
from telesurgery_ros.core.input_sources import (
    JoyInput, JoyMap, KEY_HELP, KEY_MAP, KeyboardInput, load_replay, parse_replay, ReplayInput,
    SHAPES, TrajectoryInput, XBOX_AXES, XBOX_BUTTONS)
from telesurgery_ros.core.params import ConfigError
from telesurgery_ros.core.teleop import JAW_LIMITS, quat_angle, quat_from_rotvec

RATE = 500.0
HEADER = 't,x,y,z,qx,qy,qz,qw,jaw'


def positions(source, duration, rate=RATE):
    t = np.arange(0.0, duration, 1.0 / rate)
    return t, np.array([source.sample(x).position for x in t])


@pytest.mark.parametrize('shape', SHAPES)
def test_every_shape_starts_at_its_centre_and_moves_smoothly(shape):
    center = (0.01, -0.02, 0.03)
    source = TrajectoryInput(shape, amplitude=0.02, frequency=0.25, center=center, ramp=1.0)
    np.testing.assert_allclose(source.sample(0.0).position, center, atol=1e-15)
    t, p = positions(source, 8.0)
    steps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    # Smooth start: the first steps are tiny, and no step is faster than 0.5 m/s anywhere.
    assert steps[:5].max() < 1e-6
    assert steps.max() * RATE < 0.5
    assert np.ptp(p, axis=0).max() > 0.015                    # it does move
    print(f'\n{shape}: peak speed {source.peak_speed() * 1000:.0f} mm/s')


def test_circle_has_the_amplitude_as_radius_and_the_frequency_as_period():
    source = TrajectoryInput('circle', amplitude=0.02, frequency=0.5, ramp=1.0)
    t, p = positions(source, 6.0)
    after = p[t > 1.0]
    radius = np.linalg.norm(after[:, :2] - [0.0, 0.02], axis=1)
    np.testing.assert_allclose(radius, 0.02, atol=1e-12)
    np.testing.assert_allclose(source.sample(3.1).position, source.sample(5.1).position,
                               atol=1e-12)


def test_figure_eight_crosses_itself_at_the_centre():
    source = TrajectoryInput('figure_eight', amplitude=0.03, frequency=0.5, ramp=0.0)
    np.testing.assert_allclose(source.sample(1.0).position, [0, 0, 0], atol=1e-12)
    _t, p = positions(source, 2.0)
    assert np.ptp(p[:, 0]) == pytest.approx(0.06, rel=1e-3)
    assert np.ptp(p[:, 1]) == pytest.approx(0.03, rel=1e-3)


def test_suture_has_arcs_pauses_and_a_jaw_release():
    source = TrajectoryInput('suture', amplitude=0.01, frequency=0.5, ramp=0.0)
    t = np.arange(0.0, 2.0, 1.0 / RATE)
    samples = [source.sample(x) for x in t]
    jaw = np.array([s.jaw for s in samples])
    p = np.array([s.position for s in samples])
    speed = np.linalg.norm(np.diff(p, axis=0), axis=1) * RATE
    assert jaw.max() == pytest.approx(TrajectoryInput.jaw_open, rel=1e-3)
    assert jaw.min() == 0.0
    assert (speed < 1e-9).sum() > 0.2 * len(speed)            # pauses
    depth = TrajectoryInput.arc_depth * 0.01
    assert p[:, 2].min() == pytest.approx(-depth, rel=1e-3)    # arc below ...
    assert p[:, 2].max() == pytest.approx(depth, rel=1e-3)     # ... and back above
    assert p[:, 1].max() == pytest.approx(0.02, rel=1e-3)      # across the wound
    roll = max(quat_angle(s.orientation, [0, 0, 0, 1]) for s in samples)
    assert roll == pytest.approx(TrajectoryInput.roll, rel=1e-3)


def test_unknown_shape_is_rejected():
    with pytest.raises(ValueError, match='shape'):
        TrajectoryInput('spiral')


# --- replay -------------------------------------------------------------------------------

def test_the_sample_replay_file_parses_and_plays():
    recording = load_replay(resources.data_path('config', 'sample_replay.csv'))
    assert recording.duration > 5.0
    player = ReplayInput(recording)
    np.testing.assert_allclose(player.sample(0.0).position, recording.position[0])
    speed = np.linalg.norm(np.diff(recording.position, axis=0), axis=1) / np.diff(recording.t)
    assert speed.max() < 0.5


def test_replay_interpolates_at_real_speed_and_holds_or_loops_at_the_end():
    lines = ['# comment', '', HEADER,
             '10.0, 0.0, 0.0, 0.0, 0, 0, 0, 1, 0.0',
             '11.0, 0.02, 0.0, -0.01, 0, 0, 0.7071068, 0.7071068, 0.4',
             '12.0, 0.02, 0.02, -0.01, 0, 0, 0.7071068, 0.7071068, 0.0']
    recording = parse_replay(lines)
    np.testing.assert_allclose(recording.t, [0.0, 1.0, 2.0])   # from the first row
    player = ReplayInput(recording)
    mid = player.sample(0.5)
    np.testing.assert_allclose(mid.position, [0.01, 0.0, -0.005])
    assert mid.jaw == pytest.approx(0.2)
    assert quat_angle(mid.orientation, quat_from_rotvec([0, 0, math.pi / 4])) < 1e-6
    np.testing.assert_allclose(player.sample(50.0).position, [0.02, 0.02, -0.01])
    looped = ReplayInput(recording, loop=True)
    np.testing.assert_allclose(looped.sample(2.5).position, [0.01, 0.0, -0.005])


def test_replay_columns_may_come_in_any_order():
    lines = ['jaw,qw,qz,qy,qx,z,y,x,t,comment', '0,1,0,0,0,-0.1,0,0,0,a',
             '0,1,0,0,0,-0.1,0,0.01,1,b']
    recording = parse_replay(lines)
    np.testing.assert_allclose(recording.position[1], [0.01, 0.0, -0.1])


@pytest.mark.parametrize('rows, expected', [
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0.1,0,0,abc,0,0,0,1,0'],
     r'bad\.csv: line 3, column 4 \(z\): \'abc\' is not a finite number'),
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0.1,0,0,nan,0,0,0,1,0'], r'line 3, column 4 \(z\)'),
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0,0,0,0,0,0,0,1,0'],
     r'line 3, column 1 \(t\).*must increase strictly'),
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0.1,0,0,0,0,0,0,2,0'],
     r'line 3, column 5 \(qx\.\.qw\): quaternion norm 2\.0000'),
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0.1,0,0,0,0,0,0,1,3'], r'line 3, column 9 \(jaw\)'),
    ([HEADER, '0,0,0,0,0,0,0,1,0', '0.1,0,0,0,0,0,0,1'], r'line 3: 8 values, the header has 9'),
    (['t,x,y,z,qw,jaw', '0,0,0,0,1,0'], r'line 1: header .* lacks column\(s\) qx, qy, qz'),
    (['# only a comment'], r'no header line'),
    ([HEADER, '0,0,0,0,0,0,0,1,0'], r'needs at least 2 samples'),
])
def test_malformed_replay_names_the_file_line_and_column(rows, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_replay(rows, source='bad.csv')


def test_missing_replay_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match='No such file'):
        load_replay(str(tmp_path / 'missing.csv'))


# --- keyboard -----------------------------------------------------------------------------

def test_keys_move_rotate_open_and_clutch():
    keys = KeyboardInput(step=0.005, angle_step=0.05, jaw_step=0.1)
    assert keys.press('w').startswith('move x +5.0 mm')
    assert keys.press('W')                                   # caps lock does not matter
    keys.press('d')
    keys.press('r')
    np.testing.assert_allclose(keys.sample().position, [0.01, -0.005, 0.005])
    keys.press('j')
    assert quat_angle(keys.sample().orientation, quat_from_rotvec([0, 0, 0.05])) < 1e-12
    keys.press('n')
    assert keys.sample().jaw == pytest.approx(0.1)
    for _ in range(30):
        keys.press('n')
    assert keys.sample().jaw == pytest.approx(JAW_LIMITS[1])
    assert keys.press(' ') == 'clutch engaged' and keys.sample().clutch
    assert keys.press(' ') == 'clutch released' and not keys.sample().clutch
    assert keys.press('+') == 'step x1.25'
    keys.press('s')
    assert keys.sample().position[0] == pytest.approx(0.01 - 0.00625)
    assert keys.press('z') is None and keys.press('\x1b') is None


def test_every_mapped_key_is_in_the_printed_key_map():
    for key in KEY_MAP:
        label = 'space' if key == ' ' else key
        assert label in KEY_HELP, f'key {key!r} is not documented'


# --- gamepad (sensor_msgs/Joy) ----------------------------------------------------------------

def joy_message(**values):
    """Axes and buttons of an Xbox-layout Joy message, by XBOX_AXES / XBOX_BUTTONS name."""
    axes = [0.0] * len(XBOX_AXES)
    buttons = [0] * len(XBOX_BUTTONS)
    for name, value in values.items():
        if name in XBOX_AXES:
            axes[XBOX_AXES.index(name)] = value
        else:
            buttons[XBOX_BUTTONS.index(name)] = value
    return axes, buttons


def run_joy(source, axes, buttons, start, duration, rate=RATE):
    """Send one Joy message per 50 ms (joy_node's autorepeat: 20 Hz) and sample at ``rate``."""
    t = start
    next_joy = start
    while t < start + duration - 1e-9:
        if t >= next_joy - 1e-9:
            source.on_joy(axes, buttons, t)
            next_joy += 0.05
        sample = source.sample(t)
        t += 1.0 / rate
    return sample


def test_default_joy_map_is_the_xbox_layout_of_joy_node():
    m = JoyMap()
    assert (XBOX_AXES[m.axis_x], XBOX_AXES[m.axis_y]) == ('left_stick_y', 'left_stick_x')
    assert (XBOX_AXES[m.axis_z], XBOX_AXES[m.axis_roll]) == ('right_stick_y', 'right_stick_x')
    assert XBOX_BUTTONS[m.button_clutch] == 'a'
    assert (XBOX_BUTTONS[m.button_jaw_open], XBOX_BUTTONS[m.button_jaw_close]) == ('rb', 'lb')
    assert len(XBOX_AXES) == 8 and len(XBOX_BUTTONS) == 11


def test_joy_axes_are_velocities_along_the_rcm_axes():
    source = JoyInput(JoyMap(linear_speed=0.1))
    source.sample(0.0)
    # Left stick pushed up (joy_node: +1) and half left: forward (+x) and left (+y).
    sample = run_joy(source, *joy_message(left_stick_y=1.0, left_stick_x=0.5), 0.0, 1.0)
    np.testing.assert_allclose(sample.position, [0.1, 0.05, 0.0], atol=0.1 / RATE + 1e-12)
    # Right stick down: -z; released sticks: the hand stays where it is.
    sample = run_joy(source, *joy_message(right_stick_y=-1.0), 1.0, 0.5)
    assert sample.position[2] == pytest.approx(-0.05, abs=0.1 / RATE + 1e-12)
    still = run_joy(source, *joy_message(), 1.5, 1.0).position
    np.testing.assert_allclose(source.sample(3.0).position, still, atol=1e-15)


def test_joy_roll_turns_about_z_and_the_jaw_buttons_open_and_close():
    source = JoyInput(JoyMap(angular_speed=1.0, jaw_speed=1.0))
    source.sample(0.0)
    sample = run_joy(source, *joy_message(right_stick_x=1.0), 0.0, 0.5)
    assert quat_angle(sample.orientation, quat_from_rotvec([0.0, 0.0, 0.5])) < 0.01
    sample = run_joy(source, *joy_message(rb=1), 0.5, 0.4)
    assert sample.jaw == pytest.approx(0.4, abs=0.01)
    sample = run_joy(source, *joy_message(rb=1), 0.9, 5.0)
    assert sample.jaw == pytest.approx(JAW_LIMITS[1])
    sample = run_joy(source, *joy_message(lb=1), 5.9, 10.0)
    assert sample.jaw == pytest.approx(JAW_LIMITS[0])


def test_joy_clutch_is_held_and_a_silent_joy_stops_the_hand_and_releases_it():
    source = JoyInput(JoyMap(linear_speed=0.1, timeout=0.5))
    source.sample(0.0)
    assert not source.sample(0.1).clutch                       # nothing received yet
    sample = run_joy(source, *joy_message(a=1, left_stick_y=1.0), 0.1, 0.2)
    assert sample.clutch
    # The Joy source dies with the stick pushed: the hand moves for at most the timeout.
    before = source.sample(0.3).position[0]
    after = source.sample(5.0)
    assert after.position[0] - before <= 0.1 * 0.5 + 1e-9
    assert not after.clutch and not source.fresh(5.0)
    assert source.messages == 4


def test_joy_ignores_unused_missing_and_non_finite_values():
    source = JoyInput(JoyMap(axis_y=-1, axis_z=40))
    source.sample(0.0)
    source.on_joy([math.nan, 1.0, 0.0, 1.0], [1], 0.0)    # short message, NaN on axis 0
    sample = source.sample(0.1)
    np.testing.assert_allclose(sample.position, [0.1 * 0.1, 0.0, 0.0], atol=1e-12)
    source.on_joy([0.0, 7.0], [], 0.1)                     # out of range: clamped to 1
    assert source.sample(0.2).position[0] == pytest.approx(0.02)
