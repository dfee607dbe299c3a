"""
Record ROS 2 messages to MCAP as ``ros2 bag`` does: raw CDR bytes + ``ros2msg`` schemas.

The messages are written exactly as they travelled (the CDR bytes a ``raw=True``
subscription hands over), so nothing is re-encoded. Each channel's schema is the message
definition in the ``ros2msg`` encoding: the type's ``.msg`` text followed by the text of
every type it uses, each after a ``====`` separator and a ``MSG: pkg/Type`` line. The
``.msg`` files come from ``<prefix>/share/<pkg>/msg/`` (a ROS 2 install and the PyPI wheels
both ship them), found with :func:`telesurgery_ros.resources.share_directory`. The files open
in Foxglove, ``ros2 bag`` (rosbag2_storage_mcap) and the ``mcap`` / ``mcap-ros2-support``
readers.

Each channel carries the ``offered_qos_profiles`` metadata that the MCAP ``ros2`` profile asks
for (the rosbag2 YAML form), so ``ros2 bag play`` offers every topic again with the QoS it had:
latched topics (``/tf_static``, ``/robot_description``, ``safety/state``) stay TRANSIENT_LOCAL.

:class:`RobotRecording` makes a recording replay as a robot: ``/robot_description`` (the URDF
as loaded, once at the start), ``/tf_static`` and ``/tf`` (``tf2_msgs/msg/TFMessage``) from the
joint states and the URDF (:mod:`telesurgery_ros.core.robot_model`). ``tf2_msgs`` is not a
PyPI wheel, so its schema text is carried here (the one-line ``TFMessage.msg`` of ROS 2;
a ROS install's own file wins when it is there) and its CDR is written by :func:`encode_tf`.
"""
import math
import os
import re
import struct
import threading

from mcap.writer import Writer

from telesurgery_ros import resources
from telesurgery_ros.core.robot_model import RobotModel, Transform

SCHEMA_ENCODING = 'ros2msg'
MESSAGE_ENCODING = 'cdr'
PROFILE = 'ros2'
_SEPARATOR = '=' * 80
# Message definitions for the types no wheel ships (the text of their .msg file in ROS 2).
KNOWN_DEFINITIONS = {
    'tf2_msgs/TFMessage': 'geometry_msgs/TransformStamped[] transforms\n',
}
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'
STRING = 'std_msgs/msg/String'
PRIMITIVES = frozenset((
    'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16',
    'int32', 'uint32', 'int64', 'uint64', 'string', 'wstring'))


def split_type_name(type_name):
    """``'geometry_msgs/msg/PoseStamped'`` or ``'geometry_msgs/PoseStamped'`` -> (pkg, name)."""
    parts = type_name.split('/')
    if len(parts) == 3 and parts[1] == 'msg':
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f'not a message type name: {type_name!r} (expected pkg/msg/Type)')


def _read_msg_file(package, name, share_directory):
    try:
        path = os.path.join(share_directory(package), 'msg', f'{name}.msg')
    except FileNotFoundError:
        path = None
    try:
        if path is None:
            raise OSError
        with open(path) as handle:
            return handle.read()
    except OSError:
        known = KNOWN_DEFINITIONS.get(f'{package}/{name}')
        if known is not None:
            return known
        raise FileNotFoundError(f'message definition {package}/msg/{name} not found: no '
                                f'{path or package + " share directory"}') from None


def field_types(text, package):
    """Return the non-primitive types (``pkg/Type``) the fields of a ``.msg`` text use."""
    found = []
    for raw in text.splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        tokens = line.split(None, 1)
        if len(tokens) < 2 or re.match(r'^\w+\s*=', tokens[1]):
            continue            # malformed, or a constant (constants are always primitive)
        type_token = tokens[0]
        base = re.sub(r'\[.*\]$', '', type_token)
        base = re.sub(r'<=\d+$', '', base)
        if base in PRIMITIVES:
            continue
        if '/' in base:
            pkg, name = split_type_name(base)
        else:
            pkg, name = package, base
        qualified = f'{pkg}/{name}'
        if qualified not in found:
            found.append(qualified)
    return found


def message_definition(type_name, share_directory=resources.share_directory):
    """Return the ``ros2msg`` schema of ``type_name``: its .msg and all it depends on."""
    package, name = split_type_name(type_name)
    main = _read_msg_file(package, name, share_directory)
    sections = []
    seen = {f'{package}/{name}'}
    pending = field_types(main, package)
    while pending:
        dep = pending.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dep_pkg, dep_name = split_type_name(dep)
        text = _read_msg_file(dep_pkg, dep_name, share_directory)
        sections.append(f'{_SEPARATOR}\nMSG: {dep}\n{text.rstrip()}\n')
        pending.extend(t for t in field_types(text, dep_pkg) if t not in seen)
    return main.rstrip() + '\n' + ''.join(sections)


# --- QoS as rosbag2 records it -------------------------------------------------------------

# rmw's "infinite" duration, as rosbag2 writes it (RMW_DURATION_INFINITE).
_INFINITE = {'sec': 9223372036, 'nsec': 854775807}


def qos_yaml(reliability, durability, depth, history='keep_last'):
    """
    ``offered_qos_profiles`` text for one publisher, in rosbag2's YAML (metadata version 9).

    ``reliability`` 'reliable' | 'best_effort', ``durability`` 'transient_local' | 'volatile'.
    """
    for value, allowed in ((reliability, ('reliable', 'best_effort')),
                           (durability, ('transient_local', 'volatile')),
                           (history, ('keep_last', 'keep_all'))):
        if value not in allowed:
            raise ValueError(f'QoS {value!r}: expected one of {", ".join(allowed)}')
    infinite = f"\n    sec: {_INFINITE['sec']}\n    nsec: {_INFINITE['nsec']}"
    return (f'- history: {history}\n  depth: {int(depth)}\n  reliability: {reliability}\n'
            f'  durability: {durability}\n  deadline:{infinite}\n  lifespan:{infinite}\n'
            f'  liveliness: automatic\n  liveliness_lease_duration:{infinite}\n'
            '  avoid_ros_namespace_conventions: false\n')


def qos_yaml_of(profile):
    """``offered_qos_profiles`` text of an rclpy ``QoSProfile`` (read by attribute)."""
    return qos_yaml(profile.reliability.name.lower(), profile.durability.name.lower(),
                    profile.depth, profile.history.name.lower())


LATCHED_QOS = qos_yaml('reliable', 'transient_local', 1)   # /tf_static, /robot_description
TF_QOS = qos_yaml('reliable', 'volatile', 100)              # tf2_ros's default for /tf


class McapRecorder:
    """
    An MCAP file being written; thread-safe; one channel per topic.

    ``counts`` holds the messages written per topic (a declared topic that got none is not
    in it, as in the file's statistics).

    ``declare(topic, type_name, qos)`` registers a channel with its ``offered_qos_profiles``
    (:func:`qos_yaml`); ``write(topic, type_name, cdr_bytes, log_time_ns)`` appends a message
    (a topic written without being declared gets an empty ``offered_qos_profiles``, which
    rosbag2 reads as "unknown, use the default"). :meth:`close` writes the summary (always
    call it: an unclosed file has no index, though readers can still scan it).
    """

    def __init__(self, path, share_directory=resources.share_directory):
        self.path = path
        self.share_directory = share_directory
        self._stream = open(path, 'wb')
        self._writer = Writer(self._stream)
        self._writer.start(profile=PROFILE, library='telesurgery_ros recorder')
        self._schemas = {}
        self._channels = {}
        self._sequence = {}
        self.counts = {}
        self._lock = threading.Lock()
        self._closed = False

    def declare(self, topic, type_name, qos=''):
        """Register (once) and return the channel id of ``topic`` carrying ``type_name``."""
        with self._lock:
            return self._channel(topic, type_name, qos)

    def _channel(self, topic, type_name, qos=''):
        key = (topic, type_name)
        if key not in self._channels:
            package, name = split_type_name(type_name)
            schema_name = f'{package}/msg/{name}'
            if schema_name not in self._schemas:
                definition = message_definition(schema_name, self.share_directory)
                self._schemas[schema_name] = self._writer.register_schema(
                    name=schema_name, encoding=SCHEMA_ENCODING, data=definition.encode())
            self._channels[key] = self._writer.register_channel(
                topic=topic, message_encoding=MESSAGE_ENCODING,
                schema_id=self._schemas[schema_name],
                metadata={'offered_qos_profiles': qos})
            self._sequence[key] = 0
        return self._channels[key]

    def write(self, topic, type_name, data, log_time_ns, publish_time_ns=None):
        """Append one message (CDR bytes, as received) on ``topic``."""
        with self._lock:
            if self._closed:
                return
            channel = self._channel(topic, type_name)
            key = (topic, type_name)
            self._sequence[key] += 1
            self._writer.add_message(
                channel_id=channel, log_time=int(log_time_ns), data=bytes(data),
                publish_time=int(log_time_ns if publish_time_ns is None else publish_time_ns),
                sequence=self._sequence[key])
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.finish()
            self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()


# --- CDR for the messages we write ourselves ------------------------------------------------

class CdrWriter:
    """
    Plain little-endian CDR (XCDR1, what rmw_fastrtps writes), the subset our messages need.

    Every value is aligned to its size (8 at most), counted from the end of the 4-byte
    encapsulation header; padding bytes are zero.
    """

    HEADER = b'\x00\x01\x00\x00'       # CDR_LE, no options

    def __init__(self):
        self._buffer = bytearray(self.HEADER)

    def _align(self, size):
        pad = -(len(self._buffer) - len(self.HEADER)) % size
        self._buffer.extend(bytes(pad))

    def uint32(self, value):
        self._align(4)
        self._buffer.extend(struct.pack('<I', value))

    def int32(self, value):
        self._align(4)
        self._buffer.extend(struct.pack('<i', value))

    def float64s(self, values):
        self._align(8)
        self._buffer.extend(struct.pack(f'<{len(values)}d', *values))

    def string(self, text):
        data = text.encode()
        self.uint32(len(data) + 1)
        self._buffer.extend(data + b'\x00')

    def bytes(self):  # noqa: A003 (the writer's output, as bytes() would name it)
        return bytes(self._buffer)


def split_stamp(stamp_ns):
    """Nanoseconds -> (sec, nanosec) of a builtin_interfaces/Time."""
    stamp_ns = int(stamp_ns)
    return stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000


def encode_string(text):
    """CDR of a ``std_msgs/msg/String``."""
    cdr = CdrWriter()
    cdr.string(text)
    return cdr.bytes()


def _transform_stamped(cdr, transform, stamp_ns):
    sec, nanosec = split_stamp(stamp_ns)
    cdr.int32(sec)
    cdr.uint32(nanosec)
    cdr.string(transform.parent)
    cdr.string(transform.child)
    cdr.float64s(tuple(transform.translation) + tuple(transform.rotation))


def encode_transform_stamped(transform, stamp_ns):
    """CDR of one ``geometry_msgs/msg/TransformStamped`` (for the tests against rclpy)."""
    cdr = CdrWriter()
    _transform_stamped(cdr, transform, stamp_ns)
    return cdr.bytes()


def encode_tf(transforms, stamp_ns):
    """CDR of a ``tf2_msgs/msg/TFMessage`` of :class:`~.core.robot_model.Transform` items."""
    cdr = CdrWriter()
    cdr.uint32(len(transforms))
    for transform in transforms:
        _transform_stamped(cdr, transform, stamp_ns)
    return cdr.bytes()


# --- a recording that replays as a robot ----------------------------------------------------

class RobotRecording:
    """
    Writes what Foxglove's 3D panel, RViz and ``ros2 bag play`` need to show the arm.

    :meth:`start` writes ``/robot_description`` (the URDF text, unchanged) and ``/tf_static``
    once: every fixed joint plus ``world_frame`` -> the URDF root at ``base_pose``, all in ONE
    TFMessage, stamped at the start. MCAP has no latching, so both are written with a
    TRANSIENT_LOCAL ``offered_qos_profiles`` (``ros2 bag play`` latches them again) and as a
    single message each (a player that seeks shows the last message before the seek point on
    each topic, so one message must hold the whole static tree).

    :meth:`on_joint_state` writes ``/tf``: one transform per moving joint of the URDF, stamped
    with the joint state's stamp, for every joint state (``tf_rate`` 0) or at most ``tf_rate``
    times per second of joint-state time. Joint states that lack a URDF joint are counted in
    ``skipped`` with the reason, never written half.
    """

    def __init__(self, recorder, urdf_text, world_frame='world',
                 base_pose=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), tf_rate=0.0):
        self.recorder = recorder
        self.urdf = urdf_text
        self.model = RobotModel.from_urdf(urdf_text)
        self.world_frame = world_frame
        self.base_pose = base_pose
        self.tf_rate = float(tf_rate)
        self.written = 0
        self.skipped = 0
        self.skip_reason = ''
        self._last_stamp = None
        recorder.declare('/robot_description', STRING, LATCHED_QOS)
        recorder.declare('/tf_static', TF_MESSAGE, LATCHED_QOS)
        recorder.declare('/tf', TF_MESSAGE, TF_QOS)

    def static_transforms(self):
        translation, rotation = self.base_pose
        base = Transform(self.world_frame, self.model.root, tuple(map(float, translation)),
                         tuple(map(float, rotation)))
        return [base] + self.model.static_transforms()

    def start(self, now_ns):
        self.recorder.write('/robot_description', STRING, encode_string(self.urdf), now_ns)
        self.recorder.write('/tf_static', TF_MESSAGE,
                            encode_tf(self.static_transforms(), now_ns), now_ns)

    def on_joint_state(self, names, positions, stamp_ns, now_ns):
        """Write ``/tf`` for one joint state (names, positions); return whether it did."""
        if self.tf_rate > 0 and self._last_stamp is not None and \
                stamp_ns - self._last_stamp < 1e9 / self.tf_rate * 0.999:
            return False
        values = {n: p for n, p in zip(names, positions) if math.isfinite(p)}
        try:
            transforms = self.model.moving_transforms(values)
        except KeyError as exc:
            self.skipped += 1
            self.skip_reason = f'joint state without a finite position: {exc.args[0]}'
            return False
        self._last_stamp = stamp_ns
        self.recorder.write('/tf', TF_MESSAGE, encode_tf(transforms, stamp_ns), now_ns)
        self.written += 1
        return True

    def summary(self):
        return {'tf_rate_hz': self.tf_rate, 'tf_messages': self.written,
                'joint_states_skipped': self.skipped, 'skip_reason': self.skip_reason}
