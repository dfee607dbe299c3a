"""
Hand-written CDR for the few messages of the 1 kHz paths, without ROS.

A node that only needs a PoseStamped's stamp and pose, or a WrenchStamped's force, takes the
message raw (``raw=True``: the serialized bytes) and reads the fields it needs with
:mod:`struct`; a node that publishes them at a high rate builds the bytes the same way and
publishes them unchanged (``publish(bytes)``). Both skip the conversion between a Python
message object and its C struct, which the profiles showed was most of the cost of a
callback or a publish.

The format is the one rmw_fastrtps writes for ROS 2 messages (checked against
``rclpy.serialization`` in ``test/test_cdr.py``): a 4-byte encapsulation header (``00 01``:
CDR little endian, ``00 00``: big endian; then two option bytes), then the fields in order,
each aligned to its own size relative to the end of the header; a string is a uint32 length
that counts its terminating NUL, the characters and the NUL; a sequence is a uint32 count
and its elements.
"""
import struct

HEADER_LE = b'\x00\x01\x00\x00'      # CDR, little endian (what rmw_fastrtps writes)
_ENDIAN = {b'\x00\x01': '<', b'\x00\x00': '>'}

_STAMP_LEN = struct.Struct('<iII')    # header.stamp sec, nanosec, frame_id length
_SEVEN = struct.Struct('<7d')        # position (3) + orientation (4)
_THREE = struct.Struct('<3d')
_SIX = struct.Struct('<6d')
_U32 = struct.Struct('<I')


class CdrError(ValueError):
    """The bytes are not a message of the expected layout (truncated, unknown header)."""


def _endian(data):
    try:
        return _ENDIAN[bytes(data[:2])]
    except KeyError:
        raise CdrError(f'unknown CDR encapsulation {bytes(data[:2]).hex()}') from None


def _align(offset, size):
    return (offset + size - 1) & ~(size - 1)


def _read_header(data):
    """Return (endian, sec, nanosec, frame_id, body offset after the header) of a stamped msg."""
    endian = _endian(data)
    try:
        if endian == '<':
            sec, nanosec, length = _STAMP_LEN.unpack_from(data, 4)
        else:
            sec, nanosec, length = struct.unpack_from('>iII', data, 4)
    except struct.error as exc:
        raise CdrError(f'truncated message header: {exc}') from None
    end = 16 + length
    if length == 0 or end > len(data):
        raise CdrError(f'bad frame_id length {length} in a {len(data)}-byte message')
    frame = bytes(data[16:end - 1]).decode('utf-8', 'replace')
    return endian, sec, nanosec, frame, end - 4


def _doubles(data, endian, body_offset, count):
    offset = 4 + _align(body_offset, 8)
    fmt = _SEVEN if count == 7 else _THREE
    try:
        if endian == '<':
            return fmt.unpack_from(data, offset)
        return struct.unpack_from(f'>{count}d', data, offset)
    except struct.error as exc:
        raise CdrError(f'truncated message: {exc}') from None


def decode_pose_stamped(data):
    """
    Read a geometry_msgs/PoseStamped from CDR bytes.

    Return ``(stamp_ns, frame_id, (x, y, z), (qx, qy, qz, qw))``; raise :class:`CdrError`
    when the bytes do not hold one.
    """
    endian, sec, nanosec, frame, body = _read_header(data)
    values = _doubles(data, endian, body, 7)
    return sec * 1_000_000_000 + nanosec, frame, values[:3], values[3:]


def decode_stamp(data):
    """Return ``(stamp_ns, frame_id)`` of any message that starts with a std_msgs/Header."""
    _endian_, sec, nanosec, frame, _body = _read_header(data)
    return sec * 1_000_000_000 + nanosec, frame


def decode_wrench_force(data):
    """Return the force ``(fx, fy, fz)`` of a geometry_msgs/WrenchStamped in CDR bytes."""
    endian, _sec, _nanosec, _frame, body = _read_header(data)
    return _doubles(data, endian, body, 3)


def _header(stamp_ns, frame_id):
    frame = frame_id.encode() + b'\x00'
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    head = HEADER_LE + _STAMP_LEN.pack(sec, nanosec, len(frame)) + frame
    return head + b'\x00' * (4 + _align(len(head) - 4, 8) - len(head))


def _header4(stamp_ns, frame_id):
    """Return the header padded to 4 bytes (for a sequence count that follows)."""
    frame = frame_id.encode() + b'\x00'
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    head = HEADER_LE + _STAMP_LEN.pack(sec, nanosec, len(frame)) + frame
    return head + b'\x00' * (-len(head) % 4)


class PoseStampedEncoder:
    """Build PoseStamped CDR bytes for one frame_id."""

    def __init__(self, frame_id):
        self.frame_id = frame_id

    def encode(self, stamp_ns, position, quaternion):
        """Return the CDR bytes of a PoseStamped (position m, quaternion x, y, z, w)."""
        return _header(stamp_ns, self.frame_id) + _SEVEN.pack(
            float(position[0]), float(position[1]), float(position[2]),
            float(quaternion[0]), float(quaternion[1]), float(quaternion[2]),
            float(quaternion[3]))


def encode_wrench_stamped(stamp_ns, frame_id, force, torque=(0.0, 0.0, 0.0)):
    """Return the CDR bytes of a geometry_msgs/WrenchStamped."""
    return _header(stamp_ns, frame_id) + _SIX.pack(
        float(force[0]), float(force[1]), float(force[2]),
        float(torque[0]), float(torque[1]), float(torque[2]))


class JointStateEncoder:
    """Build sensor_msgs/JointState CDR bytes for a fixed list of joint names."""

    def __init__(self, names, frame_id=''):
        self.names = list(names)
        self.frame_id = frame_id
        self._count = len(self.names)
        parts = [_U32.pack(self._count)]
        for name in self.names:
            text = name.encode() + b'\x00'
            parts.append(_U32.pack(len(text)) + text + b'\x00' * (-len(text) % 4))
        self._names = b''.join(parts)
        self._doubles = struct.Struct(f'<{self._count}d')

    def encode(self, stamp_ns, position, velocity, effort):
        """Return the CDR bytes; each of position, velocity, effort has one value per name."""
        out = bytearray(_header4(stamp_ns, self.frame_id))
        out += self._names
        for values in (position, velocity, effort):
            out += _U32.pack(self._count)
            out += b'\x00' * (-(len(out) - 4) % 8)
            out += self._doubles.pack(*values)
        return bytes(out)


__all__ = ['CdrError', 'JointStateEncoder', 'PoseStampedEncoder', 'decode_pose_stamped',
           'decode_stamp', 'decode_wrench_force', 'encode_wrench_stamped']
