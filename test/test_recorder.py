"""
MCAP recording: raw CDR bytes + ros2msg schemas that standard readers decode.

Messages are serialised with rclpy (the bytes a raw subscription receives), recorded, then
read back with the ``mcap`` reader (encodings, channels, counts) and decoded by
``mcap-ros2-support`` from the recorded schema text alone, which proves the schemas are
complete. The messages the recorder serialises itself (``tf2_msgs/msg/TFMessage``, which has
no wheel, and ``std_msgs/msg/String``) are checked against rclpy's serializer and rosbags'.
"""
import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped, WrenchStamped
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros import resources
from telesurgery_ros.core import kinematics
from telesurgery_ros.core.robot_model import Transform
from telesurgery_ros.recorder import (
    encode_string, encode_tf, encode_transform_stamped, field_types, McapRecorder,
    message_definition, qos_yaml, qos_yaml_of, RobotRecording, TF_MESSAGE)
from telesurgery_ros.resources import data_path
from telesurgery_ros.rosutil import STREAM_QOS
import yaml


def pose(i):
    msg = PoseStamped()
    msg.header.frame_id = 'psm1_rcm'
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + i, 250_000_000
    msg.pose.position.x, msg.pose.position.z = 0.001 * i, -0.12
    msg.pose.orientation.x, msg.pose.orientation.w = 1.0, 0.0
    return msg


def read_back(path):
    """{topic: [(log_time_ns, decoded message)]}, decoded from the recorded schemas only."""
    decoded = {}
    with open(path, 'rb') as handle:
        reader = make_reader(handle, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, ros_msg in reader.iter_decoded_messages():
            decoded.setdefault(channel.topic, []).append((message.log_time, ros_msg))
    return decoded


def test_schema_text_lists_every_dependency_once():
    text = message_definition('diagnostic_msgs/msg/DiagnosticArray')
    assert text.count('MSG: std_msgs/Header') == 1
    assert text.count('MSG: builtin_interfaces/Time') == 1
    assert 'MSG: diagnostic_msgs/DiagnosticStatus' in text
    assert 'MSG: diagnostic_msgs/KeyValue' in text
    assert field_types('byte OK=0\nbyte level\nKeyValue[] values\nfloat64[<=3] v\n'
                       'string<=5 s\ngeometry_msgs/Point p # c', 'diagnostic_msgs') == [
        'diagnostic_msgs/KeyValue', 'geometry_msgs/Point']
    with pytest.raises(FileNotFoundError, match='geometry_msgs/msg/NoSuchType'):
        message_definition('geometry_msgs/msg/NoSuchType')


def test_recorded_messages_read_back_with_standard_readers(tmp_path):
    path = str(tmp_path / 'run.mcap')
    status = DiagnosticStatus(level=DiagnosticStatus.WARN, name='relay', message='lossy',
                              values=[KeyValue(key='dropped', value='3'),
                                      KeyValue(key='delay_ms', value='67.5')])
    joints = JointState(name=['yaw', 'pitch'], position=[0.1, -0.2], velocity=[0.0, 0.5])
    wrench = WrenchStamped()
    wrench.wrench.force.z = -1.5
    with McapRecorder(path) as recorder:
        for i in range(5):
            recorder.write('/console/psm1/servo_cp', 'geometry_msgs/msg/PoseStamped',
                           serialize_message(pose(i)), 1_000_000_000 + i * 1_000_000)
        recorder.write('/safety/state', 'std_msgs/msg/String',
                       serialize_message(String(data='HOLD: stale command')), 2_000_000_000)
        recorder.write('/network/stats', 'diagnostic_msgs/msg/DiagnosticArray',
                       serialize_message(DiagnosticArray(status=[status])), 2_100_000_000)
        recorder.write('/psm1/measured_js', 'sensor_msgs/msg/JointState',
                       serialize_message(joints), 2_200_000_000)
        recorder.write('/psm1/measured_cf', 'geometry_msgs/msg/WrenchStamped',
                       serialize_message(wrench), 2_300_000_000)
        assert recorder.counts['/console/psm1/servo_cp'] == 5

    with open(path, 'rb') as handle:
        reader = make_reader(handle)
        summary = reader.get_summary()
        assert reader.get_header().profile == 'ros2'
        assert {s.encoding for s in summary.schemas.values()} == {'ros2msg'}
        assert {c.message_encoding for c in summary.channels.values()} == {'cdr'}
        counts = {summary.channels[cid].topic: n
                  for cid, n in summary.statistics.channel_message_counts.items()}
    assert counts == {'/console/psm1/servo_cp': 5, '/safety/state': 1, '/network/stats': 1,
                      '/psm1/measured_js': 1, '/psm1/measured_cf': 1}

    decoded = read_back(path)
    poses = decoded['/console/psm1/servo_cp']
    assert [t for t, _m in poses] == [1_000_000_000 + i * 1_000_000 for i in range(5)]
    last = poses[-1][1]
    assert last.header.frame_id == 'psm1_rcm'
    assert (last.header.stamp.sec, last.header.stamp.nanosec) == (104, 250_000_000)
    assert math.isclose(last.pose.position.x, 0.004) and last.pose.orientation.x == 1.0
    assert decoded['/safety/state'][0][1].data == 'HOLD: stale command'
    stats = decoded['/network/stats'][0][1].status[0]
    assert stats.level == 1 and [(kv.key, kv.value) for kv in stats.values] == [
        ('dropped', '3'), ('delay_ms', '67.5')]
    js = decoded['/psm1/measured_js'][0][1]
    assert list(js.name) == ['yaw', 'pitch'] and list(js.velocity) == [0.0, 0.5]
    assert decoded['/psm1/measured_cf'][0][1].wrench.force.z == -1.5


def test_writes_after_close_are_ignored(tmp_path):
    path = str(tmp_path / 'late.mcap')
    recorder = McapRecorder(path)
    recorder.write('/safety/state', 'std_msgs/msg/String', serialize_message(String()), 1)
    recorder.close()
    recorder.write('/safety/state', 'std_msgs/msg/String', serialize_message(String()), 2)
    recorder.close()
    assert sum(len(v) for v in read_back(path).values()) == 1


# --- messages we serialise ourselves: TFMessage, String; a recording that replays a robot --

def transforms():
    return [Transform('world', 'psm1_base', (-0.3, -0.6, 0.0), (0.0, 0.0, 0.0, 1.0)),
            Transform('psm1_rcm', 'psm1_yaw_link_x', (0.1, -0.2, 0.3), (0.0, 0.6, 0.0, 0.8))]


def test_transform_cdr_matches_rclpy_and_rosbags():
    stamp = 1_700_000_123_456_789_012
    for transform in transforms():
        ours = encode_transform_stamped(transform, stamp)
        msg = deserialize_message(ours, TransformStamped)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_123, 456_789_012)
        assert (msg.header.frame_id, msg.child_frame_id) == (transform.parent, transform.child)
        t, q = msg.transform.translation, msg.transform.rotation
        assert (t.x, t.y, t.z, q.x, q.y, q.z, q.w) == transform.translation + transform.rotation
        # Same layout as rclpy's: same length and every non-padding byte (rclpy leaves the
        # alignment padding uninitialised, ours is zero).
        theirs = serialize_message(msg)
        assert len(ours) == len(theirs)
        assert ours[-56:] == theirs[-56:]                  # the seven float64
    assert encode_string('<robot name="psm1"/>') == serialize_message(
        String(data='<robot name="psm1"/>'))
    store = get_typestore(Stores.ROS2_KILTED)          # it knows tf2_msgs: a reference CDR
    ours = encode_tf(transforms(), 42)
    decoded = store.deserialize_cdr(ours, TF_MESSAGE)
    assert [t.child_frame_id for t in decoded.transforms] == ['psm1_base', 'psm1_yaw_link_x']
    assert bytes(store.serialize_cdr(decoded, TF_MESSAGE)) == ours
    assert encode_tf([], 0) == bytes(store.serialize_cdr(
        store.types[TF_MESSAGE](transforms=[]), TF_MESSAGE))


def test_tf_message_schema_without_tf2_msgs_installed():
    def shares(package):
        if package == 'tf2_msgs':
            raise FileNotFoundError(package)
        return resources.share_directory(package)
    text = message_definition(TF_MESSAGE, shares)
    assert text.splitlines()[0] == 'geometry_msgs/TransformStamped[] transforms'
    for dep in ('geometry_msgs/TransformStamped', 'std_msgs/Header', 'builtin_interfaces/Time',
                'geometry_msgs/Transform', 'geometry_msgs/Vector3', 'geometry_msgs/Quaternion'):
        assert text.count(f'MSG: {dep}\n') == 1, dep


def test_qos_profiles_are_rosbag2s_yaml():
    text = qos_yaml('reliable', 'transient_local', 1)
    assert yaml.safe_load(text) == [{
        'history': 'keep_last', 'depth': 1, 'reliability': 'reliable',
        'durability': 'transient_local', 'deadline': {'sec': 9223372036, 'nsec': 854775807},
        'lifespan': {'sec': 9223372036, 'nsec': 854775807}, 'liveliness': 'automatic',
        'liveliness_lease_duration': {'sec': 9223372036, 'nsec': 854775807},
        'avoid_ros_namespace_conventions': False}]
    assert qos_yaml_of(STREAM_QOS) == qos_yaml('best_effort', 'volatile', 10)
    with pytest.raises(ValueError, match="QoS 'latched'"):
        qos_yaml('reliable', 'latched', 1)


def test_robot_recording_reads_back_with_rosbags(tmp_path):
    path = tmp_path / 'robot.mcap'
    urdf = open(data_path('urdf', 'psm.urdf')).read()
    names = list(kinematics.JOINT_NAMES) + [kinematics.JAW_NAME]
    with McapRecorder(str(path)) as recorder:
        robot = RobotRecording(recorder, urdf, base_pose=((-0.3, -0.6, 0.0), (0, 0, 0, 1)),
                               tf_rate=100.0)
        robot.start(1_000)
        for i in range(10):           # 200 Hz of joint states: every second one at 100 Hz
            robot.on_joint_state(names, [0.1, 0.2, 0.1, 0.0, 0.0, 0.0, 0.5],
                                 2_000_000_000 + i * 5_000_000, 2_000_000_000 + i * 5_000_000)
        assert not robot.on_joint_state(names[:6], [0.0] * 6, 3_000_000_000, 3_000_000_000)
        assert not robot.on_joint_state(names, [math.nan] + [0.0] * 6, 3_100_000_000, 1)
        robot.tf_rate = 0.0           # every joint state (the feedback rate)
        for i in range(3):
            stamp = 4_000_000_000 + i * 1_000_000
            assert robot.on_joint_state(names, [0.0] * 7, stamp, stamp)
        summary = robot.summary()
    assert summary['tf_messages'] == 8 and summary['joint_states_skipped'] == 2
    assert 'outer_yaw' in summary['skip_reason']

    seen = {}
    with AnyReader([path]) as reader:
        durability = {c.topic: [q.durability.name for q in c.ext.offered_qos_profiles]
                      for c in reader.connections}
        for connection, _t, raw in reader.messages():
            seen.setdefault(connection.topic, []).append(
                reader.deserialize(raw, connection.msgtype))
    assert durability == {'/robot_description': ['TRANSIENT_LOCAL'],
                          '/tf_static': ['TRANSIENT_LOCAL'], '/tf': ['VOLATILE']}
    assert [m.data for m in seen['/robot_description']] == [urdf]
    (static,) = seen['/tf_static']
    assert {(t.header.frame_id, t.child_frame_id) for t in static.transforms} >= {
        ('world', 'psm1_base'), ('psm1_base', 'psm1_rcm'),
        ('psm1_wrist_yaw_link', 'psm1_tool_tip')}
    assert len(seen['/tf']) == 8
    moving = {t.child_frame_id: t for t in seen['/tf'][0].transforms}
    assert moving['psm1_insertion_link'].header.stamp.sec == 2
    assert moving['psm1_jaw_left'].header.frame_id == 'psm1_wrist_yaw_link'
    assert read_back(str(path))['/tf'][0][1].transforms[2].child_frame_id == \
        'psm1_insertion_link'           # mcap_ros2 decodes it from the same schema text


def test_declared_topics_without_messages_are_not_counted(tmp_path):
    path = str(tmp_path / 'quiet.mcap')
    with McapRecorder(path) as recorder:
        recorder.declare('/psm1/setpoint_cp', 'geometry_msgs/msg/PoseStamped',
                         qos_yaml_of(STREAM_QOS))
        recorder.write('/safety/state', 'std_msgs/msg/String', serialize_message(String()), 1)
    with open(path, 'rb') as handle:
        summary = make_reader(handle).get_summary()
    in_file = {summary.channels[cid].topic: n
               for cid, n in summary.statistics.channel_message_counts.items()}
    assert recorder.counts == in_file == {'/safety/state': 1}
    assert {c.topic for c in summary.channels.values()} == {'/psm1/setpoint_cp', '/safety/state'}
