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
"""
import os
import re
import threading

from mcap.writer import Writer

from telesurgery_ros import resources

SCHEMA_ENCODING = 'ros2msg'
MESSAGE_ENCODING = 'cdr'
PROFILE = 'ros2'
_SEPARATOR = '=' * 80
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
    path = os.path.join(share_directory(package), 'msg', f'{name}.msg')
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        raise FileNotFoundError(f'message definition {package}/msg/{name} not found: no '
                                f'{path}') from None


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


class McapRecorder:
    """
    An MCAP file being written; thread-safe; one channel per topic.

    ``write(topic, type_name, cdr_bytes, log_time_ns)`` appends a message; the schema and
    channel are registered on first use. :meth:`close` writes the summary (always call it:
    an unclosed file has no index, though readers can still scan it).
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

    def channel(self, topic, type_name):
        """Register (once) and return the channel id of ``topic`` carrying ``type_name``."""
        with self._lock:
            return self._channel(topic, type_name)

    def _channel(self, topic, type_name):
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
                schema_id=self._schemas[schema_name])
            self._sequence[key] = 0
            self.counts.setdefault(topic, 0)
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
            self.counts[topic] += 1

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
