"""
The URDF as a frame tree (core/robot_model.py).

Checked against the closed-form FK, PyBullet's own reading of the URDF, and the joint names the
slave publishes on measured_js.
"""
import math

import numpy as np
import pytest

from telesurgery_ros.core import kinematics
from telesurgery_ros.core.robot_model import lookup, RobotModel, to_matrix, UrdfError
from telesurgery_ros.core.sim import BASE_POSITION, Sim
from telesurgery_ros.resources import data_path

MODEL = RobotModel.from_file(data_path('urdf', 'psm.urdf'))
# What slave_controller publishes on psm1/measured_js (its joint_names line).
MEASURED_JS_NAMES = list(kinematics.JOINT_NAMES) + [kinematics.JAW_NAME]


def tree(q, jaw=0.3):
    positions = dict(zip(kinematics.JOINT_NAMES, q), jaw=jaw)
    return MODEL.static_transforms() + MODEL.moving_transforms(positions)


def test_measured_js_carries_exactly_the_urdf_joints_robot_state_publisher_needs():
    assert MODEL.root == 'psm1_base'
    assert MODEL.state_joint_names == MEASURED_JS_NAMES
    mimics = {j.name: (j.mimic.joint, j.mimic.multiplier) for j in MODEL.moving_joints
              if j.mimic is not None}
    assert mimics == {'jaw_left': ('jaw', 0.5), 'jaw_right': ('jaw', -0.5)}
    jaw = MODEL.joint('jaw')
    assert jaw.type == 'revolute' and jaw.parent == 'psm1_wrist_yaw_link'


def test_tool_tip_from_the_urdf_agrees_with_the_closed_form_kinematics():
    kin = kinematics.PsmKinematics()
    rng = np.random.default_rng(3)
    worst = 0.0
    for q in rng.uniform(kinematics.LOWER, kinematics.UPPER, size=(500, 6)):
        pose = lookup(tree(q), 'psm1_rcm', 'psm1_tool_tip')
        position, rotation = kin.fk(q)
        worst = max(worst, float(np.abs(pose[:3, 3] - position).max()),
                    float(np.abs(pose[:3, :3] - rotation).max()))
    print(f'URDF chain vs closed-form FK over 500 joint vectors: worst {worst:.1e}')
    assert worst < 1e-12


def test_link_frames_agree_with_pybullets_reading_of_the_same_urdf():
    sim = Sim(scene=False, gravity=False)
    try:
        q = [0.3, -0.2, 0.11, 1.0, 0.4, -0.5, 0.6]
        sim.reset(q)
        transforms = tree(q[:6], jaw=q[6])
        world = to_matrix(type(transforms[0])('world', 'psm1_base', BASE_POSITION,
                                              (0.0, 0.0, 0.0, 1.0)))
        worst_position = worst_rotation = 0.0
        for link in ('psm1_rcm', 'psm1_insertion_link', 'psm1_tool_tip', 'psm1_jaw_left',
                     'psm1_jaw_right'):
            pose = world @ lookup(transforms, 'psm1_base', link)
            position, quaternion = sim.link_pose_world(link)
            worst_position = max(worst_position, float(np.abs(pose[:3, 3] - position).max()))
            worst_rotation = max(worst_rotation, float(np.abs(
                pose[:3, :3] - kinematics.quat_to_matrix(quaternion)).max()))
        print(f'URDF chain vs PyBullet link frames: worst {worst_position:.1e} m, '
              f'{worst_rotation:.1e} in the rotation matrices')
        # PyBullet hands link poses over with ~1e-8 of rounding (positions and quaternions).
        assert worst_position < 1e-6
        assert worst_rotation < 1e-6
    finally:
        sim.close()


def test_mimic_joints_follow_the_jaw_opening():
    left = {t.child: t for t in tree(np.zeros(6), jaw=math.radians(60))}['psm1_jaw_left']
    angle = 2 * math.atan2(left.rotation[1], left.rotation[3])     # about y
    assert angle == pytest.approx(math.radians(30))


def test_every_joint_state_name_is_needed():
    with pytest.raises(KeyError, match='outer_roll, jaw'):
        MODEL.moving_transforms(dict.fromkeys(kinematics.JOINT_NAMES[:3], 0.0) |
                                {'outer_wrist_pitch': 0.0, 'outer_wrist_yaw': 0.0})


URDF = """<robot name="r"><link name="a"/><link name="b"/><link name="c"/>{}</robot>"""


@pytest.mark.parametrize('joints, message', [
    ('<joint name="j" type="floating"><parent link="a"/><child link="b"/></joint>',
     "joint 'j': type 'floating' not supported"),
    ('<joint name="j" type="fixed"><parent link="a"/><child link="x"/></joint>',
     "joint 'j' names link 'x', which has no <link> element"),
    ('<joint name="j" type="fixed"><parent link="a"/><child link="b"/></joint>',
     r"one root link; this one has \['a', 'c'\]"),
    ('<joint name="j" type="revolute"><parent link="a"/><child link="b"/>'
     '<origin xyz="0 0"/></joint>', "joint 'j' origin xyz: expected 3 finite numbers"),
    ('<joint name="j" type="revolute"><parent link="a"/><child link="b"/>'
     '<axis xyz="0 0 0"/></joint><joint name="k" type="fixed"><parent link="b"/>'
     '<child link="c"/></joint>', "joint 'j': axis has zero length"),
    ('<joint name="j" type="revolute"><parent link="a"/><child link="b"/>'
     '<mimic joint="k"/></joint><joint name="k" type="fixed"><parent link="b"/>'
     '<child link="c"/></joint>', "joint 'j' mimics 'k', which is not a moving joint"),
])
def test_urdf_problems_are_named(joints, message):
    with pytest.raises(UrdfError, match=message):
        RobotModel.from_urdf(URDF.format(joints))


def test_lookup_names_where_the_chain_breaks():
    with pytest.raises(LookupError, match="frame 'psm1_base' has no parent on the way to "
                                          "'world'"):
        lookup(tree(np.zeros(6)), 'world', 'psm1_tool_tip')
