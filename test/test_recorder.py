"""
MCAP recording: raw CDR bytes + ros2msg schemas that standard readers decode.

Messages are serialised with rclpy (the bytes a raw subscription receives), recorded, then
read back with the ``mcap`` reader (encodings, channels, counts) and decoded by
``mcap-ros2-support`` from the recorded schema text alone, which proves the schemas are
complete.
"""
import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, WrenchStamped
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros.recorder import field_types, McapRecorder, message_definition


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
