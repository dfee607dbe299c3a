"""Kinematics of the PSM-like arm: closed-form IK round trip, limits, and FK against PyBullet."""
import math

import numpy as np
import pybullet as pb
import pytest

from telesurgery_ros.core import contract
from telesurgery_ros.core.kinematics import (
    IK_REASONS, LOWER, matrix_to_quat, PsmKinematics, quat_to_matrix, rotation_angle, UPPER)
from telesurgery_ros.core.sim import Sim
from telesurgery_ros.resources import data_path

KIN = PsmKinematics()


def random_joints(rng, count):
    q = rng.uniform(LOWER, UPPER, size=(count, 6))
    q[:, 2] = np.maximum(q[:, 2], 0.002)      # wrist centre away from the RCM singularity
    return q


def test_home_pose_matches_the_contract():
    result = KIN.ik(contract.HOME_POSITION, contract.HOME_ORIENTATION)
    assert result.reachable, result.reason
    position, quat = KIN.fk_pose(result.joints)
    assert np.allclose(position, contract.HOME_POSITION, atol=1e-12)
    assert np.allclose(quat, contract.HOME_ORIENTATION, atol=1e-12)
    # Home is well inside the joint range (the insertion is mid-range).
    assert np.all(result.joints - LOWER > 0.05) and np.all(UPPER - result.joints > 0.05)


def test_round_trip_under_a_micrometre_over_thousands_of_reachable_poses():
    rng = np.random.default_rng(7)
    worst_position = worst_angle = 0.0
    for q in random_joints(rng, 5000):
        position, quat = KIN.fk_pose(q)
        result = KIN.ik(position, quat, reference=q)
        assert result.reachable, (q, result.reason)
        assert np.all(result.joints >= LOWER) and np.all(result.joints <= UPPER)
        back, rotation = KIN.fk(result.joints)
        worst_position = max(worst_position, float(np.linalg.norm(back - position)))
        worst_angle = max(worst_angle, rotation_angle(rotation, quat_to_matrix(quat)))
    print(f'\nFK(IK(x)) over 5000 poses: worst position error {worst_position * 1e9:.3f} nm, '
          f'worst orientation error {worst_angle:.2e} rad')
    assert worst_position < 1e-6
    assert worst_angle < 1e-6


def test_roll_branch_follows_the_reference():
    q = np.array([0.1, -0.2, 0.1, math.radians(200), 0.3, -0.4])
    position, quat = KIN.fk_pose(q)
    near = KIN.ik(position, quat, reference=q)
    assert near.joints[3] == pytest.approx(q[3], abs=1e-9)
    far = KIN.ik(position, quat, reference=np.zeros(6))
    assert far.joints[3] == pytest.approx(q[3] - 2 * math.pi, abs=1e-9)


def test_the_goal_area_around_home_is_reachable():
    """A 5 cm circle, a 4 cm figure-eight and small rotations around home."""
    home = np.array(contract.HOME_POSITION)
    for a in np.linspace(0, 2 * math.pi, 73):
        for offset in ([0.05 * math.cos(a), 0.05 * math.sin(a), 0.0],
                       [0.04 * math.sin(a), 0.02 * math.sin(2 * a), 0.0],
                       [0.0, 0.05 * math.cos(a), 0.05 * math.sin(a)]):
            result = KIN.ik(home + offset, contract.HOME_ORIENTATION)
            assert result.reachable, (offset, result.reason)
    for axis in np.eye(3):
        for angle in (-0.5, 0.5):
            rot = quat_to_matrix(contract.HOME_ORIENTATION) @ _axis_angle(axis, angle)
            assert KIN.ik(home, matrix_to_quat(rot)).reachable


def _axis_angle(axis, angle):
    x, y, z = axis * math.sin(angle / 2)
    return quat_to_matrix([x, y, z, math.cos(angle / 2)])


def test_unreachable_goals_give_the_clamped_pose_and_a_reason_never_nan():
    rng = np.random.default_rng(3)
    for _ in range(3000):
        position = rng.uniform(-0.6, 0.6, 3)
        quat = rng.normal(size=4)
        result = KIN.ik(position, quat)
        assert np.all(np.isfinite(result.joints))
        assert np.all(result.joints >= LOWER) and np.all(result.joints <= UPPER)
        assert np.all(np.isfinite(result.position)) and np.all(np.isfinite(result.quaternion))
        if not result.reachable:
            assert result.reason and set(result.reason.split(',')) <= set(IK_REASONS)
        back, _ = KIN.fk_pose(result.joints)
        assert np.allclose(back, result.position, atol=1e-12)
    # Too deep: the insertion limit clamps the depth along the same line.
    deep = KIN.ik([0.0, 0.0, -0.4], contract.HOME_ORIENTATION)
    assert not deep.reachable and deep.reason == 'insertion_limit'
    assert deep.position == pytest.approx([0.0, 0.0, -(UPPER[2] + KIN.tip_offset)], abs=1e-12)
    # Sideways beyond the pitch limit.
    side = KIN.ik([0.3, 0.0, -0.05], contract.HOME_ORIENTATION)
    assert not side.reachable and 'pitch_limit' in side.reason


@pytest.mark.parametrize('bad', [
    ([math.nan, 0.0, -0.1], [1.0, 0.0, 0.0, 0.0]),
    ([0.0, math.inf, -0.1], [1.0, 0.0, 0.0, 0.0]),
    ([0.0, 0.0, -0.1], [math.nan, 0.0, 0.0, 1.0]),
    ([0.0, 0.0, -0.1], [0.0, 0.0, 0.0, 0.0]),
])
def test_non_finite_goal_returns_the_reference(bad):
    reference = np.array([0.1, 0.2, 0.1, 0.3, 0.1, -0.1])
    result = KIN.ik(*bad, reference=reference)
    assert not result.reachable and result.reason == 'non_finite'
    assert np.array_equal(result.joints, reference)


def test_fk_matches_pybullet_link_poses():
    sim = Sim(scene=False, gravity=False)
    try:
        rng = np.random.default_rng(11)
        worst = worst_angle = 0.0
        for q in random_joints(rng, 300):
            sim.reset(np.append(q, 0.0))
            for name, expected in (('psm1_tool_tip', KIN.fk(q)),):
                position, rotation = sim.link_pose_rcm(name)
                worst = max(worst, float(np.linalg.norm(position - expected[0])))
                worst_angle = max(worst_angle, rotation_angle(rotation, expected[1]))
            wrist, _ = sim.link_pose_rcm('psm1_wrist_yaw_link')
            assert np.allclose(wrist, KIN.wrist_centre(q), atol=1e-6)
        print(f'\nFK vs PyBullet over 300 poses: worst {worst * 1e9:.3f} nm, '
              f'{worst_angle:.2e} rad')
        assert worst < 1e-6 and worst_angle < 1e-5
        # The URDF carries the same limits as the kinematics.
        for index, name in zip(sim.arm_joints, ('yaw', 'pitch', 'insertion', 'roll', 'wp', 'wy')):
            info = pb.getJointInfo(sim.arm, index, physicsClientId=sim.client)
            lower, upper = info[8], info[9]
            i = sim.arm_joints.index(index)
            assert lower == pytest.approx(LOWER[i], abs=1e-5), name
            assert upper == pytest.approx(UPPER[i], abs=1e-5), name
    finally:
        sim.close()


def test_the_rcm_sits_at_the_port_of_the_scene():
    sim = Sim(scene=True)
    try:
        patient = sim.scene['patient']
        port = [j for j in range(pb.getNumJoints(patient, physicsClientId=sim.client))
                if pb.getJointInfo(patient, j, physicsClientId=sim.client)[12] == b'port'][0]
        state = pb.getLinkState(patient, port, computeForwardKinematics=True,
                                physicsClientId=sim.client)
        assert np.allclose(state[4], sim.rcm_position, atol=1e-9)
        assert data_path('urdf', 'psm.urdf').endswith('psm.urdf')
    finally:
        sim.close()


def test_pressing_on_the_task_board_gives_an_upward_tool_force():
    sim = Sim(scene=True)
    try:
        home = np.append(KIN.ik(contract.HOME_POSITION, contract.HOME_ORIENTATION).joints, 0.0)
        sim.reset(home)
        free = sim.tool_force()
        # The board's top is 15 mm below the home tip: ask for 25 mm.
        goal = np.append(KIN.ik([0.0, 0.0, -0.145], contract.HOME_ORIENTATION).joints, 0.0)
        for _ in range(1500):
            sim.command(goal)
            sim.step()
        force = sim.tool_force()
        tip = KIN.fk(sim.read()[0][:6])[0]
        print(f'\ntool on the board: force {np.round(force, 2).tolist()} N, tip z {tip[2]:.4f} m')
        assert np.allclose(free, 0.0)
        assert force[2] > 5.0 and abs(force[2]) > 3 * np.linalg.norm(force[:2])
        assert tip[2] > -0.137                       # stopped by the board, not through it
    finally:
        sim.close()
