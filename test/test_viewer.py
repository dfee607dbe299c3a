"""
The viewer's logic without a display: keys, Joy mapping, HUD, camera panels, frames, scene.

The scene tests use a PyBullet DIRECT client (no window): the same code the viewer's GUI
client runs, minus the renderer.
"""
import math

import numpy as np
from PIL import Image
import pybullet as pb
import pytest

from telesurgery_ros import resources
from telesurgery_ros.core import contract, kinematics, viewer
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.core.input_sources import JoyInput, JoyMap
from telesurgery_ros.core.params import ConfigError
from telesurgery_ros.core.viewer_hud import BACKGROUND, PanelRenderer
from telesurgery_ros.core.viewer_scene import check_urdf, FAR_AWAY, ViewerScene

DOWN, TRIGGERED, RELEASED = pb.KEY_IS_DOWN, pb.KEY_WAS_TRIGGERED, pb.KEY_WAS_RELEASED


# --- keys ---------------------------------------------------------------------------------

def test_pybullet_key_constants_are_the_ones_we_decode():
    assert (viewer.KEY_IS_DOWN, viewer.KEY_WAS_TRIGGERED, viewer.KEY_WAS_RELEASED) == (
        DOWN, TRIGGERED, RELEASED)
    assert viewer.key_name(pb.B3G_UP_ARROW) == 'up'
    assert viewer.key_name(pb.B3G_PAGE_DOWN) == 'page_down'
    assert viewer.key_name(ord('W')) == 'w' and viewer.key_name(32) == ' '
    assert viewer.key_name(pb.B3G_F1) is None


def test_key_tracker_holds_releases_and_never_loses_a_tap():
    keys = viewer.KeyTracker()
    assert keys.update({ord('w'): DOWN | TRIGGERED}) == ['w'] and keys.held == {'w'}
    assert keys.update({ord('w'): DOWN}) == [] and keys.held == {'w'}
    assert keys.update({ord('w'): RELEASED}) == [] and keys.held == set()
    # Pressed and released between two polls: one state with both bits.
    pressed = keys.update({ord('x'): TRIGGERED | RELEASED})
    assert pressed == ['x'] and keys.held == set()
    assert keys.active(pressed) == {'x'}
    # A slow poll saw only the release: still a press.
    assert keys.update({ord('c'): RELEASED}) == ['c']
    assert keys.update({pb.B3G_F1: TRIGGERED}) == []


def test_motion_keys_become_the_joy_state_input_joy_reads():
    """Each key moves the hand the way its label says, through the console's JoyInput."""
    expected = {'w': (0, +1), 's': (0, -1), 'a': (1, +1), 'd': (1, -1), 'r': (2, +1),
                'f': (2, -1), 'up': (0, +1), 'left': (1, +1), 'page_down': (2, -1)}
    for key, (axis, sign) in expected.items():
        axes, buttons = viewer.KeyJoy().state({key})
        source = JoyInput(JoyMap(linear_speed=0.1))
        source.sample(0.0)
        source.on_joy(axes, buttons, 0.0)
        position = source.sample(0.2).position
        want = np.zeros(3)
        want[axis] = sign * 0.02
        np.testing.assert_allclose(position, want, atol=1e-12, err_msg=key)
    source = JoyInput()
    source.sample(0.0)
    source.on_joy(*viewer.KeyJoy().state({'q', 'n'}), 0.0)
    sample = source.sample(0.1)
    assert kinematics.rotation_angle(kinematics.quat_to_matrix(sample.orientation),
                                     np.eye(3)) == pytest.approx(0.1)
    assert sample.orientation[2] > 0.0                     # about +z
    assert sample.jaw == pytest.approx(0.1)                # n opens
    # Opposite keys cancel.
    assert viewer.KeyJoy().state({'w', 's'})[0] == [0.0] * 8


def test_key_joy_publishes_while_active_then_a_few_neutral_messages_then_nothing():
    keys = viewer.KeyJoy(neutral_repeats=2)
    assert keys.update(set(), []) is None                   # idle: quiet, a gamepad may speak
    axes, buttons = keys.update({'w'}, ['w'])
    assert axes[JoyMap().axis_x] == 1.0
    assert keys.update(set(), []) is not None
    assert keys.update(set(), []) is not None
    assert keys.update(set(), []) is None
    # Space toggles the clutch; it stays pressed (button held) until toggled off.
    axes, buttons = keys.update({' '}, [' '])
    assert buttons[JoyMap().button_clutch] == 1 and keys.clutch
    assert keys.update(set(), [])[1][JoyMap().button_clutch] == 1
    keys.update({' '}, [' '])
    assert not keys.clutch


def test_a_held_key_is_repeated_between_slow_frames_until_the_keys_go_unread():
    repeat = viewer.JoyRepeat(period=0.05, hold_timeout=0.4)
    axes, buttons = viewer.KeyJoy().state({'w'})
    repeat.polled(0.0)
    repeat.published(0.0, axes, buttons)
    assert repeat.due(0.02) is None                         # not a period yet
    assert repeat.due(0.05) == (axes, buttons)               # a frame is late: repeated
    assert repeat.due(0.06) is None                         # once per period
    assert repeat.due(0.30) == (axes, buttons)
    assert repeat.due(0.41) is None                         # the keys went unread 0.41 s
    repeat.polled(1.0)                                      # a frame at last, key still held
    assert repeat.due(1.0) == (axes, buttons)
    neutral = viewer.KeyJoy().state(())
    repeat.published(1.01, *neutral)                         # released: neutral is never
    repeat.polled(1.01)                                      # repeated (a gamepad may drive)
    assert all(repeat.due(1.01 + k * 0.05) is None for k in range(1, 10))


def test_action_keys_and_the_key_map_on_screen():
    assert viewer.actions(['w', 'x', 'c', 'b', 'p', 'o', 'v']) == [
        'estop', 'reset', 'blackout', 'profile_next', 'profile_previous', 'camera']
    help_text = ' '.join(f'{k} {w}' for k, w in viewer.KEY_HELP)
    for key in (*viewer.ACTION_KEYS, *viewer.BUTTON_KEYS, 'w', 's', 'a', 'd', 'r', 'f', 'q',
                'e'):
        assert key in help_text, key
    assert 'space' in help_text and 'E-STOP' in help_text
    assert not set(viewer.ACTION_KEYS) & (set(viewer.MOTION_KEYS) | set(viewer.BUTTON_KEYS))


def test_profile_cycling_wraps_and_starts_from_the_first():
    names = ['lan', 'metro_5g', 'rome_beijing_2024']
    assert viewer.cycle(names, 'lan', +1) == 'metro_5g'
    assert viewer.cycle(names, 'rome_beijing_2024', +1) == 'lan'
    assert viewer.cycle(names, 'lan', -1) == 'rome_beijing_2024'
    assert viewer.cycle(names, None, +1) == 'lan'
    assert viewer.cycle(names, 'unknown', -1) == 'rome_beijing_2024'
    assert viewer.cycle([], 'lan', 1) is None


# --- joints ----------------------------------------------------------------------------------

def test_joint_states_map_to_urdf_joints_and_the_jaw_splits():
    names = [*kinematics.JOINT_NAMES, kinematics.JAW_NAME, 'unknown']
    targets = viewer.urdf_joint_targets(names, [0.1, 0.2, 0.1, 0.3, math.nan, 0.0, 0.6, 9.0])
    assert targets['outer_yaw'] == 0.1 and targets['outer_insertion'] == 0.1
    assert 'outer_wrist_pitch' not in targets and 'unknown' not in targets
    assert (targets['jaw_left'], targets['jaw_right']) == (0.3, -0.3)


# --- HUD -----------------------------------------------------------------------------------

def hud(**values):
    base = {'profile': 'rome_beijing_2024', 'rtt_p50_ms': 136.4,
            'delay_ms': {'forward': 67.6, 'backward': 67.4},
            'loss': {'forward': 0.001, 'backward': 0.0}, 'force_n': 0.12, 'scale': 0.2,
            'physics_percent': 99.9, 'fps': 28.3, 'safety': SafetyStatus(SafetyState.NOMINAL)}
    base.update(values)
    return viewer.HudInputs(**base)


def text_of(lines):
    return '\n'.join(line.label + ' ' + ''.join(t for t, _c in line.spans) for line in lines)


@pytest.mark.parametrize('state,colour', [
    (SafetyState.NOMINAL, (60, 205, 90)), (SafetyState.DEGRADED, (255, 191, 0)),
    (SafetyState.HOLD, (255, 120, 20)), (SafetyState.ESTOP, (235, 45, 45))])
def test_the_safety_state_is_shown_in_its_colour_with_the_reason(state, colour):
    lines = viewer.hud_lines(hud(safety=SafetyStatus(state, 'commands stale (0.31 s > 0.10 s)')))
    (big,) = [line for line in lines if line.style == 'state']
    assert big.spans == ((state.name, colour),)
    assert viewer.STATE_COLOURS[state] == colour
    after = lines[lines.index(big) + 1]
    assert after.spans[0] == ('commands stale (0.31 s > 0.10 s)', colour)


def test_the_hud_names_the_network_the_delay_the_loss_the_force_and_the_fps():
    ghost = viewer.GhostInfo('console/psm1/predicted_cp', viewer.GHOST_COLOURS[1],
                             'no publisher')
    text = text_of(viewer.hud_lines(hud(
        blackout=True, clutch=True, ghosts=[ghost],
        messages=[(3.2, 'reset refused: nothing to reset: state is NOMINAL', False)])))
    for expected in ('rome_beijing_2024', 'BLACKOUT', '136.4 ms', 'to arm 67.6 ms',
                     'back 67.4 ms', 'to arm 0.1 %', '0.12 N', 'scale 0.2', 'clutch ON',
                     'physics 99.9 %', '28.3 fps', 'target 30', 'NOMINAL',
                     'console/psm1/predicted_cp', 'no publisher',
                     'reset refused: nothing to reset', '(3 s ago)'):
        assert expected in text, expected
    empty = text_of(viewer.hud_lines(viewer.HudInputs()))
    assert 'NO SAFETY STATE' in empty and 'RTT p50 -' in empty and 'force -' in empty


def test_long_text_wraps_at_spaces_and_splits_long_words():
    assert viewer.wrap('aaa bbb ccc', 7) == ['aaa bbb', 'ccc']
    assert viewer.wrap('abcdefghij', 4) == ['abcd', 'efgh', 'ij']
    assert all(len(line) <= 20 for line in viewer.wrap('x ' * 50, 20))


def test_panel_renderer_draws_the_lines_the_accent_bar_and_the_swatches(tmp_path):
    lines = viewer.hud_lines(hud(ghosts=[viewer.GhostInfo('g', viewer.GHOST_COLOURS[0],
                                                          'live')]))
    panel = PanelRenderer(410, 392)
    image = panel.render(lines, accent=viewer.STATE_COLOURS[SafetyState.HOLD])
    assert image.shape == (392, 410, 3) and image.dtype == np.uint8
    assert tuple(image[200, 2]) == viewer.STATE_COLOURS[SafetyState.HOLD]
    assert (image == viewer.rgb255(viewer.GHOST_COLOURS[0])).all(axis=2).sum() > 20
    # Every line fits; text pixels differ from the background in the upper part only.
    assert panel.lines_that_fit(lines) == len(lines)
    assert (image[:40, 20:] != BACKGROUND).any()
    small = PanelRenderer(410, 80)
    assert 0 < small.lines_that_fit(lines) < len(lines)
    Image.fromarray(image).save(tmp_path / 'panel.png')


# --- camera-fixed panels ---------------------------------------------------------------------

def project(point, view, projection, window):
    v = np.asarray(view).reshape(4, 4).T
    p = np.asarray(projection).reshape(4, 4).T
    clip = p @ v @ np.append(point, 1.0)
    ndc = clip[:3] / clip[3]
    return ((ndc[0] + 1.0) / 2.0 * window[0], (1.0 - ndc[1]) / 2.0 * window[1])


@pytest.mark.parametrize('preset', viewer.CAMERAS)
def test_a_panel_covers_its_pixel_rectangle_from_every_camera(preset):
    camera = viewer.CAMERA_PRESETS[preset]
    window = (1280, 720)
    view = pb.computeViewMatrixFromYawPitchRoll(camera.target, camera.distance, camera.yaw,
                                                camera.pitch, 0.0, 2)
    projection = pb.computeProjectionMatrixFOV(60.0, window[0] / window[1], 0.01, 1000.0)
    rect = (0, 720 - 46, 1280, 46)
    centre, quaternion, half_w, half_h = viewer.panel_pose(view, projection, window, rect, 0.05)
    rotation = kinematics.quat_to_matrix(quaternion)
    corners = [centre + rotation @ np.array([sx * half_w, sy * half_h, 0.0])
               for sx, sy in ((-1, 1), (1, -1))]
    (x0, y0), (x1, y1) = (project(c, view, projection, window) for c in corners)
    assert (x0, y0, x1, y1) == pytest.approx((0, 674, 1280, 720), abs=1e-3)   # px (float32)
    # The panel faces the camera (its +z towards the eye).
    eye = np.linalg.inv(np.asarray(view).reshape(4, 4).T)[:3, 3]
    assert np.dot(rotation[:, 2], eye - centre) > 0.0


def test_every_camera_preset_is_framed_on_the_workspace():
    home_tip = np.array([0.0, 0.0, 1.05]) + np.array(contract.HOME_POSITION)
    endoscope = viewer.CAMERA_PRESETS['endoscope']
    assert np.linalg.norm(np.array(endoscope.target) - home_tip) < 0.01
    # The endoscope's eye is below the body wall (z 1.044 m), looking down.
    eye_z = endoscope.target[2] - endoscope.distance * math.sin(math.radians(endoscope.pitch))
    assert eye_z < 1.044 and endoscope.pitch < 0
    assert viewer.CAMERA_PRESETS['overview'].distance > 3 * endoscope.distance


# --- frames, schedules, ghosts, the slave's loop --------------------------------------------

def test_frame_stats_count_fps_and_the_slots_a_slow_frame_dropped():
    stats = viewer.FrameStats(fps=10.0, window=2.0)
    t = 0.0
    for _ in range(20):
        stats.frame(t, t + 0.01)
        t += 0.1
    assert stats.fps(t - 0.1) == pytest.approx(10.0)
    assert stats.dropped == 0
    stats.frame(t + 0.25, t + 0.3)          # 3.5 periods after the last one: 2 slots dropped
    assert stats.dropped == 2
    assert stats.frame_time(50) == pytest.approx(0.01)
    assert viewer.FrameStats(30.0).fps(0.0) is None


def test_every_is_due_once_per_period_and_skips_when_late():
    every = viewer.Every(0.25)
    due = [every.due(t) for t in (0.0, 0.1, 0.25, 0.3, 0.5)]
    assert due == [True, False, True, False, True]
    assert every.due(2.0) and not every.due(2.1) and every.due(2.25)


def test_ring_moves_the_oldest_marker():
    ring = viewer.Ring(3)
    assert [ring.push() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        viewer.Ring(0)


def test_ghost_status_tells_silent_from_unpublished():
    assert viewer.ghost_status(0, None, 0, 1.0) == 'no publisher'
    assert viewer.ghost_status(0, None, 1, 1.0) == 'never published'
    assert viewer.ghost_status(5, 0.2, 1, 1.0) == 'live'
    assert viewer.ghost_status(5, 3.0, 1, 1.0) == 'stale'


def test_loop_figures_from_the_slaves_and_the_viewers_diagnostics():
    figures = viewer.LoopFigures()
    for physics, overruns in ((1000.0, 10), (990.0, 12), (995.0, 15)):
        figures.on_status('slave_controller: control loop', {
            'physics_rate_hz': str(physics), 'nominal_rate_hz': '1000', 'overruns': str(overruns),
            'period_p99_ms': '1.2', 'overrun_fraction': '0.01'})
    figures.on_status('arm_viewer: render', {'fps': '24.5'})
    figures.on_status('arm_viewer: render', {'fps': 'nan'})
    figures.on_status('master_console: teleop', {'rtt_p50_ms': '1.0'})
    s = figures.summary()
    assert s['reports'] == 3 and s['physics_percent_min'] == pytest.approx(99.0)
    assert s['physics_percent_mean'] == pytest.approx(99.5)
    assert s['overruns'] == 5 and s['viewer_fps_mean'] == pytest.approx(24.5)
    assert viewer.LoopFigures().summary()['physics_percent_mean'] is None


# --- the scene (PyBullet DIRECT: no window) ---------------------------------------------------

@pytest.fixture
def scene():
    s = ViewerScene(resources.data_path('urdf', 'psm.urdf'), gui=False,
                    ghosts=viewer.GHOST_COLOURS[:2], trails=(viewer.GHOST_COLOURS[0],),
                    trail_length=5)
    yield s
    s.close()


def test_the_drawn_arm_and_a_ghost_posed_by_ik_put_the_tool_tip_where_they_should(scene):
    kin = kinematics.PsmKinematics()
    target = np.array(contract.HOME_POSITION) + [0.02, -0.01, 0.01]
    q = kin.ik(target, contract.HOME_ORIENTATION).joints
    scene.set_arm(viewer.arm_targets(q, 0.5))
    np.testing.assert_allclose(scene.link_world(scene.arm, 'psm1_tool_tip'),
                               scene.world(kin.fk(q)[0]), atol=1e-6)
    scene.set_ghost(1, viewer.arm_targets(q, 0.5))
    np.testing.assert_allclose(scene.link_world(scene.ghosts[1], 'psm1_tool_tip'),
                               scene.world(target), atol=1e-6)
    scene.set_ghost(1, None)
    assert scene.link_world(scene.ghosts[1], 'psm1_tool_tip')[2] < FAR_AWAY[2] + 2.0
    # The RCM (the port) is where the simulation has it.
    np.testing.assert_allclose(scene.rcm_position, [0.0, 0.0, 1.05], atol=1e-6)


def test_trail_beads_move_and_hide(scene):
    bead = scene.trails[0][3]
    scene.move_bead(0, 3, (0.01, 0.02, 0.93))
    position, _ = pb.getBasePositionAndOrientation(bead, physicsClientId=scene.client)
    assert position == pytest.approx((0.01, 0.02, 0.93))
    scene.hide_trail(0)
    assert pb.getBasePositionAndOrientation(bead, physicsClientId=scene.client)[0][2] < -10


def test_a_urdf_that_does_not_load_is_one_line_naming_it(tmp_path):
    with pytest.raises(ConfigError) as missing:
        check_urdf(str(tmp_path / 'nope.urdf'))
    assert missing.value.problems == [f"parameter 'urdf': no such file: {tmp_path}/nope.urdf"]
    bad = tmp_path / 'bad.urdf'
    bad.write_text('<robot name="x"><link name="a"')
    with pytest.raises(ConfigError) as broken:
        check_urdf(str(bad))
    (line,) = broken.value.problems
    assert line.startswith(f"parameter 'urdf': PyBullet cannot load {bad}: ") and '\n' not in line
    print(line)
    check_urdf(resources.data_path('urdf', 'psm.urdf'))


# --- the demo's verdict for a run with the viewer -----------------------------------------

def test_demo_verdict_counts_holds_after_ready_and_the_slaves_physics():
    from telesurgery_ros.demo import models_outages, RunMetrics, verdict
    metrics = RunMetrics(start=0.0)
    metrics.on_safety('HOLD: waiting for commands', 0.5)        # before the stack is up
    metrics.on_safety('NOMINAL', 1.0)
    metrics.mark_ready(1.2)
    for i in range(10):
        metrics.on_command((0.0, 0.0, -0.12), 2.0 + i * 0.01)
        metrics.on_measured((0.0, 0.0, -0.12), 2.005 + i * 0.01)
        metrics.on_echo(2.0 + i * 0.01, 2.1 + i * 0.01)
    metrics.on_diagnostics([('slave_controller: control loop',
                             {'physics_rate_hz': '999.5', 'nominal_rate_hz': '1000'}),
                            ('arm_viewer: render', {'fps': '21.0'})])
    assert verdict(metrics.summary(), [], True, 0.005) == []
    metrics.on_safety('HOLD: commands stale (0.12 s > 0.10 s)', 5.0)
    metrics.on_diagnostics([('slave_controller: control loop',
                             {'physics_rate_hz': '900', 'nominal_rate_hz': '1000'})])
    summary = metrics.summary()
    assert summary['holds_after_ready'] == 1
    assert summary['control_loop']['viewer_fps_mean'] == pytest.approx(21.0)
    reasons = verdict(summary, [], True, 0.005)
    assert any('1 HOLD(s) after the stack was up' in r for r in reasons)
    assert any('slave physics 94.97 % of real time (< 99 %' in r for r in reasons)
    assert not any('HOLD' in r for r in verdict(summary, [], True, 0.005, allow_hold=True))
    metrics.mark_end()                       # the nodes stop: the watchdog's last HOLD
    metrics.on_safety('NOMINAL', 6.0)
    metrics.on_safety('HOLD: safety_watchdog shutting down', 7.0)
    assert metrics.summary()['holds_after_ready'] == 1
    assert models_outages('degraded') and models_outages('starlink')
    assert not models_outages('rome_beijing_2024') and not models_outages('lan')


def test_the_config_file_lists_every_parameter_with_its_default():
    import yaml
    from telesurgery_ros.nodes.arm_viewer import PARAMETERS

    def flat(tree, prefix=''):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f'{prefix}{key}.')
            else:
                yield f'{prefix}{key}', value

    with open(resources.data_path('config', 'arm_viewer.yaml')) as handle:
        config = dict(flat(yaml.safe_load(handle)['/**']['ros__parameters']))
    # 'profiles' defaults to [] (every profile), which a params file cannot spell: rcl reads an
    # empty YAML list as a parameter with no type.
    assert config == {p.name: p.default for p in PARAMETERS if p.name != 'profiles'}
