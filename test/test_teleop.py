"""Unit tests of the teleoperation logic (no rclpy): filter, scaling, clutch, re-alignment."""
import math

import numpy as np
import pytest

from telesurgery_ros.core import contract
from telesurgery_ros.core.teleop import (
    AdaptiveScale, attenuation_db, FilterConfig, JAW_LIMITS, lowpass_biquad, phase_delay,
    PoseFilter, quat_angle, quat_conjugate, quat_from_rotvec, quat_multiply, quat_to_rotvec,
    scale_problems, Teleop, TremorFilter)

RATE = 500.0
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def sine_fit(t, y, frequency):
    """Amplitude and phase (rad) of the ``frequency`` component of y(t), least squares."""
    basis = np.column_stack([np.sin(2 * math.pi * frequency * t),
                             np.cos(2 * math.pi * frequency * t), np.ones_like(t)])
    (s, c, _dc), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return math.hypot(s, c), math.atan2(c, s)


def test_tremor_filter_meets_the_figures_on_a_signal_with_a_10hz_component():
    sections = FilterConfig().sections(RATE)
    t = np.arange(0.0, 12.0, 1.0 / RATE)
    voluntary = 0.01 * np.sin(2 * math.pi * 1.0 * t)         # 1 Hz, 10 mm
    tremor = 0.001 * np.sin(2 * math.pi * 10.0 * t)          # 10 Hz, 1 mm
    filt = TremorFilter(sections)
    out = np.array([filt(x) for x in voluntary + tremor])
    keep = t > 4.0                                            # past the start transient
    tremor_in, _ = sine_fit(t[keep], tremor[keep], 10.0)
    tremor_out, _ = sine_fit(t[keep], out[keep], 10.0)
    amp_in, phase_in = sine_fit(t[keep], voluntary[keep], 1.0)
    amp_out, phase_out = sine_fit(t[keep], out[keep], 1.0)
    attenuation = 20 * math.log10(tremor_in / tremor_out)
    delay = (phase_in - phase_out) / (2 * math.pi * 1.0)
    print(f'\ntremor filter (notch 10 Hz q 3 + Butterworth 80 Hz, 500 Hz): '
          f'10 Hz attenuated {attenuation:.1f} dB, 1 Hz delayed {delay * 1000:.2f} ms, '
          f'1 Hz gain {amp_out / amp_in:.4f}')
    for f in (6.0, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0, 50.0):
        print(f'  {f:4.0f} Hz: {attenuation_db(sections, f, RATE):6.1f} dB')
    assert attenuation >= 20.0
    assert 0.0 <= delay < 0.010
    assert amp_out / amp_in == pytest.approx(1.0, abs=0.01)
    # The time-domain figures agree with the design's frequency response.
    assert phase_delay(sections, 1.0, RATE) == pytest.approx(delay, abs=2e-4)
    assert attenuation_db(sections, 10.0, RATE) >= 20.0


def test_a_plain_low_pass_near_the_tremor_band_cannot_meet_both_figures():
    butter = [lowpass_biquad(8.0, 1.0 / math.sqrt(2.0), RATE)]
    attenuation = attenuation_db(butter, 10.0, RATE)
    delay = phase_delay(butter, 1.0, RATE)
    print(f'\nButterworth 2nd order at 8 Hz: {attenuation:.1f} dB at 10 Hz, '
          f'{delay * 1000:.1f} ms at 1 Hz')
    assert attenuation < 20.0 and delay > 0.010


def test_filter_passes_a_constant_unchanged_from_the_first_sample():
    filt = TremorFilter(FilterConfig().sections(RATE))
    x = np.array([0.01, -0.02, -0.12])
    for _ in range(200):
        np.testing.assert_allclose(filt(x), x, atol=1e-12)


def test_filter_problems_name_the_parameter():
    problems = FilterConfig(cutoff=300.0).problems(500.0)
    assert len(problems) == 1 and 'tremor_filter.cutoff' in problems[0]
    assert FilterConfig().problems(500.0) == []


def test_pose_filter_smooths_rotation_as_well_as_position():
    pose_filter = PoseFilter(FilterConfig().sections(RATE))
    t = np.arange(0.0, 6.0, 1.0 / RATE)
    angles = []
    for x in t:
        q = quat_from_rotvec([0.0, 0.0, 0.02 * math.sin(2 * math.pi * 10.0 * x)])
        _p, out = pose_filter([0.0, 0.0, 0.0], q)
        angles.append(quat_to_rotvec(out)[2])
    tail = np.array(angles)[t > 3.0]
    assert np.max(np.abs(tail)) < 0.002       # the 0.02 rad 10 Hz wobble is mostly gone


def test_quaternion_helpers_round_trip():
    v = np.array([0.1, -0.4, 0.3])
    q = quat_from_rotvec(v)
    np.testing.assert_allclose(quat_to_rotvec(q), v, atol=1e-12)
    np.testing.assert_allclose(quat_multiply(q, quat_conjugate(q)), IDENTITY, atol=1e-12)
    assert quat_angle(q, IDENTITY) == pytest.approx(np.linalg.norm(v))


def run(teleop, t, position, orientation=IDENTITY, jaw=0.0, allowed=True):
    return teleop.step(t, np.asarray(position, float), orientation, jaw, allowed)


def test_first_command_is_the_home_anchor_and_motion_is_scaled():
    teleop = Teleop(scale=0.2, wait_for_arm=False)
    first = run(teleop, 0.0, [0.3, 0.4, 0.5])           # input space has no fixed origin
    np.testing.assert_allclose(first.position, contract.HOME_POSITION)
    np.testing.assert_allclose(first.orientation, contract.HOME_ORIENTATION)
    moved = run(teleop, 0.01, [0.31, 0.4, 0.45])
    np.testing.assert_allclose(moved.position - first.position, [0.002, 0.0, -0.01],
                               atol=1e-12)


def test_changing_the_scale_mid_motion_makes_no_jump():
    teleop = Teleop(scale=1.0, wait_for_arm=False)
    run(teleop, 0.0, [0, 0, 0])
    before = run(teleop, 0.01, [0.05, 0, 0]).position.copy()
    teleop.set_scale(0.2)
    np.testing.assert_allclose(run(teleop, 0.02, [0.05, 0, 0]).position, before)
    after = run(teleop, 0.03, [0.06, 0, 0]).position
    np.testing.assert_allclose(after - before, [0.002, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match='scale'):
        teleop.set_scale(-1.0)


def test_orientation_follows_the_hand_rotation_unscaled():
    teleop = Teleop(scale=0.2, wait_for_arm=False)
    run(teleop, 0.0, [0, 0, 0])
    turn = quat_from_rotvec([0.0, 0.0, 0.3])
    out = run(teleop, 0.01, [0, 0, 0], turn)
    expected = quat_multiply(turn, contract.HOME_ORIENTATION)
    assert quat_angle(out.orientation, expected) < 1e-9
    assert quat_angle(out.orientation, contract.HOME_ORIENTATION) == pytest.approx(0.3)


def test_commands_wait_at_home_for_the_arm_then_start_at_its_measured_pose():
    teleop = Teleop(scale=1.0)
    for i in range(10):                       # the script runs ahead, the arm is silent
        out = run(teleop, i * 0.01, [i * 0.001, 0, 0], jaw=0.5)
        np.testing.assert_allclose(out.position, contract.HOME_POSITION)
        assert out.jaw == contract.HOME_JAW
    arm = np.array([0.01, 0.02, -0.1])
    teleop.set_measured(arm, IDENTITY)
    out = run(teleop, 0.10, [0.010, 0, 0])
    np.testing.assert_allclose(out.position, arm)
    out = run(teleop, 0.11, [0.011, 0, 0])
    np.testing.assert_allclose(out.position, arm + [0.001, 0, 0], atol=1e-12)
    # Later measured poses do not re-anchor while following.
    teleop.set_measured(arm + 0.005, IDENTITY)
    out = run(teleop, 0.12, [0.012, 0, 0])
    np.testing.assert_allclose(out.position, arm + [0.002, 0, 0], atol=1e-12)


def test_without_waiting_the_first_measured_pose_still_re_anchors():
    teleop = Teleop(scale=1.0, wait_for_arm=False)
    run(teleop, 0.0, [0, 0, 0])
    moved = run(teleop, 0.01, [0.001, 0, 0])
    np.testing.assert_allclose(moved.position, np.add(contract.HOME_POSITION, [0.001, 0, 0]))
    teleop.set_measured([0.01, 0.02, -0.1], IDENTITY)
    np.testing.assert_allclose(run(teleop, 0.02, [0.002, 0, 0]).position, [0.01, 0.02, -0.1])


def test_clutch_holds_the_tool_and_release_continues_without_a_jump():
    teleop = Teleop(scale=0.5, wait_for_arm=False)
    run(teleop, 0.0, [0, 0, 0])
    before = run(teleop, 0.01, [0.01, 0, 0]).position.copy()
    teleop.set_clutch(True)
    for i, x in enumerate(np.linspace(0.01, 0.2, 50)):     # the hand travels 19 cm
        held = run(teleop, 0.02 + i * 0.01, [x, 0.05, 0])
        np.testing.assert_allclose(held.position, before)
    teleop.set_clutch(False)
    after = run(teleop, 1.0, [0.2, 0.05, 0])
    np.testing.assert_allclose(after.position, before)     # no jump on release
    nxt = run(teleop, 1.01, [0.21, 0.05, 0])
    np.testing.assert_allclose(nxt.position - before, [0.005, 0, 0], atol=1e-12)


def test_hold_re_aligns_to_the_measured_pose_and_resumes_without_a_jump():
    teleop = Teleop(scale=1.0)
    run(teleop, 0.0, [0, 0, 0])
    for i in range(1, 10):
        run(teleop, i * 0.01, [i * 0.001, 0, 0])
    frozen = np.array([0.003, 0.0, -0.118])                  # where the arm stopped
    frozen_q = quat_from_rotvec([0.05, 0.0, 0.0])
    teleop.set_measured(frozen, frozen_q)
    for i in range(10, 40):                                  # HOLD while the script goes on
        out = run(teleop, i * 0.01, [i * 0.001, 0, 0], allowed=False)
        np.testing.assert_allclose(out.position, frozen)
        assert quat_angle(out.orientation, frozen_q) < 1e-9
    resumed = run(teleop, 0.40, [0.040, 0, 0])
    step = np.linalg.norm(resumed.position - frozen)
    assert step == pytest.approx(0.001, abs=1e-12)          # one cycle of motion, no jump


def test_hold_without_fresh_feedback_sends_nothing_then_resumes_at_the_arm():
    teleop = Teleop(scale=1.0)
    teleop.set_measured([0.0, 0.0, -0.12], IDENTITY)
    for i in range(10):
        run(teleop, i * 0.01, [i * 0.001, 0, 0])
    # Outage: HOLD, and the last measured pose we heard is stale (the arm moved on).
    for i in range(10, 20):
        assert teleop.step(i * 0.01, [i * 0.001, 0, 0], IDENTITY, 0.0, motion_allowed=False,
                           feedback_fresh=False) is None
    frozen = np.array([0.012, 0.0, -0.12])                 # where the arm really stopped
    teleop.set_measured(frozen, IDENTITY)
    out = teleop.step(0.2, [0.02, 0, 0], IDENTITY, 0.0, motion_allowed=False)
    np.testing.assert_allclose(out.position, frozen)
    out = run(teleop, 0.21, [0.021, 0, 0])
    np.testing.assert_allclose(out.position, frozen + [0.001, 0, 0], atol=1e-12)
    # Following (motion allowed), stale feedback does not stop the commands.
    assert teleop.step(0.22, [0.022, 0, 0], IDENTITY, 0.0, feedback_fresh=False) is not None


def test_jaw_is_rate_limited_clipped_and_held_while_clutched():
    teleop = Teleop(scale=1.0, jaw_rate=2.0, wait_for_arm=False)
    run(teleop, 0.0, [0, 0, 0], jaw=0.0)
    out = run(teleop, 0.1, [0, 0, 0], jaw=1.0)
    assert out.jaw == pytest.approx(0.2)
    for i in range(2, 20):
        out = run(teleop, i * 0.1, [0, 0, 0], jaw=5.0)
    assert out.jaw == pytest.approx(JAW_LIMITS[1])
    teleop.set_clutch(True)
    out = run(teleop, 2.1, [0, 0, 0], jaw=0.0)
    assert out.jaw == pytest.approx(JAW_LIMITS[1])


def test_hold_command_prefers_the_measured_pose():
    teleop = Teleop()
    run(teleop, 0.0, [0, 0, 0])
    np.testing.assert_allclose(teleop.hold_command().position, contract.HOME_POSITION)
    teleop.set_measured([0.01, 0.0, -0.1], IDENTITY)
    np.testing.assert_allclose(teleop.hold_command().position, [0.01, 0.0, -0.1])


def test_scale_must_be_positive():
    with pytest.raises(ValueError, match='scale'):
        Teleop(scale=0.0)


def test_rtt_scale_target_falls_linearly_between_rtt_low_and_rtt_high():
    policy = AdaptiveScale('rtt', scale=1.0, scale_min=0.4, rtt_low=0.1, rtt_high=0.5)
    assert policy.target(0.05) == 1.0
    assert policy.target(0.3) == pytest.approx(0.7)
    assert policy.target(0.6) == pytest.approx(0.4)
    assert policy.target(float('nan')) == policy.effective      # unknown: stay
    assert AdaptiveScale('fixed', 1.0, 0.4).target(0.6) == 1.0


def test_rtt_scale_changes_only_when_allowed_and_at_most_at_its_rate():
    policy = AdaptiveScale('rtt', scale=1.0, scale_min=0.4, rtt_low=0.1, rtt_high=0.5,
                           rate=0.5)
    for _ in range(100):                       # moving: the scale stays whatever the RTT
        assert policy.update(0.002, 0.6, may_change=False) == 1.0
    scales = [policy.update(0.002, 0.6, may_change=True) for _ in range(1000)]  # 2 s
    steps = np.abs(np.diff([1.0] + scales))
    assert steps.max() <= 0.5 * 1.0 * 0.002 + 1e-12
    assert scales[int(1.2 / 0.002) - 1] == pytest.approx(0.4)     # 0.6 at 0.5/s: 1.2 s
    assert scales[-1] == pytest.approx(0.4)
    assert policy.update(0.002, 0.05, may_change=False) == pytest.approx(0.4)
    fixed = AdaptiveScale('fixed', scale=0.2, scale_min=0.1)
    assert fixed.update(0.002, 0.6, may_change=True) == 0.2


def test_scale_policy_problems_name_the_parameters():
    assert scale_problems('fixed', 1.0, 5.0, 0.5, 0.1) == []       # unused by fixed
    problems = scale_problems('rtt', 1.0, 2.0, 0.5, 0.1)
    assert any('scale_min' in p for p in problems)
    assert any('rtt_low' in p and 'rtt_high' in p for p in problems)
    with pytest.raises(ValueError, match='scale_min'):
        AdaptiveScale('rtt', 1.0, 2.0)


def test_the_scale_falls_during_a_clutch_and_the_tool_never_jumps():
    """Teleop with the rtt policy: the scale moves only while clutched; no command jumps."""
    teleop = Teleop(scale=1.0, wait_for_arm=False)
    policy = AdaptiveScale('rtt', scale=1.0, scale_min=0.25, rtt_low=0.1, rtt_high=0.5,
                           rate=1.0)
    dt = 0.002
    positions, scales = [], []
    for i in range(3000):                      # 6 s: the hand moves 10 mm/s along x
        t = i * dt
        clutch = 2.0 <= t < 3.5
        teleop.set_clutch(clutch)
        scale = policy.update(dt, 0.6, may_change=teleop.clutch)
        if scale != teleop.scale:
            teleop.set_scale(scale)
        positions.append(run(teleop, t, [0.01 * t, 0, 0]).position.copy())
        scales.append(teleop.scale)
    positions = np.array(positions)
    speed = np.linalg.norm(np.diff(positions, axis=0), axis=1) / dt
    before = speed[int(1.0 / dt):int(2.0 / dt)].mean()
    after = speed[int(4.0 / dt):].mean()
    print(f'tool speed {before * 1e3:.2f} mm/s before the clutch, {after * 1e3:.2f} mm/s '
          f'after it (scale {scales[-1]:.2f}); fastest step {speed.max() * 1e3:.2f} mm/s')
    assert scales[int(1.9 / dt)] == 1.0 and scales[-1] == pytest.approx(0.25)
    assert after == pytest.approx(0.25 * 0.01, rel=1e-3)
    assert speed.max() <= 0.01 * (1 + 1e-6)           # never faster than the hand: no jump
