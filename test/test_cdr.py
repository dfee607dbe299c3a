"""The hand-written CDR of core/cdr.py against rclpy's own serializer."""
import math

from geometry_msgs.msg import PoseStamped, WrenchStamped
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import JointState

from telesurgery_ros.core import cdr


def _pose(frame, sec, nanosec, position, quaternion):
    msg = PoseStamped()
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = position
    q.x, q.y, q.z, q.w = quaternion
    return msg


def _zero_padding(data, frame):
    """Zero the padding after frame_id, which rclpy leaves uninitialised, to compare."""
    end = 16 + len(frame) + 1
    pad = (-(end - 4)) % 8
    return data[:end] + b'\x00' * pad + data[end + pad:]


# Frame ids of every length modulo 8 exercise the padding before the doubles.
FRAMES = ['', 'a', 'ab', 'abc', 'psm1', 'psm1_rc', 'psm1_rcm', 'psm12_tool_tip', 'x' * 33]


@pytest.mark.parametrize('frame', FRAMES)
def test_pose_stamped_decodes_what_rclpy_serializes(frame):
    msg = _pose(frame, 1796195301, 985902357, (0.01, -0.02, -0.12),
                (0.1, 0.2, 0.3, math.sqrt(1 - 0.14)))
    stamp_ns, got_frame, position, quaternion = cdr.decode_pose_stamped(serialize_message(msg))
    assert stamp_ns == 1796195301 * 10 ** 9 + 985902357
    assert got_frame == frame
    assert position == (0.01, -0.02, -0.12)
    assert quaternion == pytest.approx((0.1, 0.2, 0.3, math.sqrt(1 - 0.14)), abs=0.0)
    assert cdr.decode_stamp(serialize_message(msg)) == (stamp_ns, frame)


@pytest.mark.parametrize('frame', FRAMES)
def test_pose_stamped_encoding_is_byte_identical_to_rclpy(frame):
    msg = _pose(frame, 12, 345, (1.5, -2.25, 3.0), (0.0, 0.0, 0.0, 1.0))
    ours = cdr.PoseStampedEncoder(frame).encode(12 * 10 ** 9 + 345, (1.5, -2.25, 3.0),
                                                (0.0, 0.0, 0.0, 1.0))
    assert ours == _zero_padding(serialize_message(msg), frame)
    assert deserialize_message(ours, PoseStamped) == msg


@pytest.mark.parametrize('frame', ['', 'psm1_rcm', 'abcdefg'])
def test_wrench_stamped_round_trip(frame):
    msg = WrenchStamped()
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = 3, 4
    f = msg.wrench.force
    f.x, f.y, f.z = 0.5, -1.25, 2.0
    ours = cdr.encode_wrench_stamped(3 * 10 ** 9 + 4, frame, (0.5, -1.25, 2.0))
    assert ours == _zero_padding(serialize_message(msg), frame)
    assert deserialize_message(ours, WrenchStamped) == msg
    assert cdr.decode_wrench_force(serialize_message(msg)) == (0.5, -1.25, 2.0)


@pytest.mark.parametrize('names', [['a'], ['outer_yaw', 'outer_pitch', 'jaw'],
                                   ['j1', 'j22', 'j333', 'j4444', 'j55555', 'j6', 'jaw']])
def test_joint_state_encoding_deserializes_to_the_same_message(names):
    values = [[0.1 * (i + k) for i in range(len(names))] for k in range(3)]
    ours = cdr.JointStateEncoder(names).encode(7 * 10 ** 9 + 8, *values)
    msg = deserialize_message(ours, JointState)
    assert list(msg.name) == names
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (7, 8)
    assert [list(msg.position), list(msg.velocity), list(msg.effort)] == values
    reference = JointState(name=names, position=values[0], velocity=values[1],
                           effort=values[2])
    reference.header.stamp.sec, reference.header.stamp.nanosec = 7, 8
    assert msg == reference


def test_big_endian_pose_and_bad_bytes():
    import struct
    body = struct.pack('>iII', 1, 2, 2) + b'a\x00' + b'\x00' * 2 + struct.pack(
        '>7d', 1, 2, 3, 0, 0, 0, 1)
    assert cdr.decode_pose_stamped(b'\x00\x00\x00\x00' + body) == (
        10 ** 9 + 2, 'a', (1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))
    with pytest.raises(cdr.CdrError, match='encapsulation'):
        cdr.decode_pose_stamped(b'\x07\x07\x00\x00' + body)
    good = serialize_message(_pose('psm1_rcm', 1, 2, (0, 0, 0), (0, 0, 0, 1)))
    with pytest.raises(cdr.CdrError, match='truncated'):
        cdr.decode_pose_stamped(good[:40])
    with pytest.raises(cdr.CdrError, match='frame_id length'):
        cdr.decode_pose_stamped(good[:12] + struct.pack('<I', 1000) + good[16:])
