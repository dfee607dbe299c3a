"""
The link between two sites over Zenoh, without ROS or Zenoh: streams, keys, replay guard.

Streams
    What crosses, in which direction, under which Zenoh key and with which quality of service
    (:func:`streams`). Commands go ``forward`` (surgeon -> patient): the surgeon site's
    ``console/psm1/servo_cp`` arrives as the patient site's ``psm1/servo_cp``, the jaw
    likewise. Feedback, ``safety/state`` and ``network/stats`` go ``backward``, named as
    network_relay names them (``psm1/measured_cp`` -> ``console/psm1/measured_cp``; the state
    and the statistics keep their names).

Keys
    The scheme of zenoh-bridge-ros2dds: ``<link_namespace>/<ROS name without its leading
    slash>``, with the patient site's names (``telesurgery/psm1/servo_cp``), which is what a
    bridge started on the patient site with ``namespace: /telesurgery`` routes.
    The links announce themselves with liveliness tokens
    ``<link_namespace>/@site_link/<role>/<session id>`` (``@site_link`` is a verbatim chunk:
    no wildcard of the data keys matches it).

Attachment
    Every sample carries ``MAGIC + session id (16 bytes) + sequence number (u64, big
    endian)``: the session id is the sender's start time (ns since the epoch, u64) and 8
    random bytes, so a later session of the same site compares greater; the sequence number
    counts per key from 1. :class:`ReplayGuard` drops and counts duplicates, old sequence
    numbers and samples of a stale session.
"""
from dataclasses import dataclass
import os
import re
import struct
import time

from telesurgery_ros.core import contract

ROLES = ('surgeon', 'patient')
PEER_ROLE = {'surgeon': 'patient', 'patient': 'surgeon'}
DEFAULT_NAMESPACE = 'telesurgery'
TOKEN_CHUNK = '@site_link'

POSE = 'geometry_msgs/msg/PoseStamped'
WRENCH = 'geometry_msgs/msg/WrenchStamped'
JOINTS = 'sensor_msgs/msg/JointState'
STRING = 'std_msgs/msg/String'
DIAGNOSTICS = 'diagnostic_msgs/msg/DiagnosticArray'

# Kinds of streams: how each is carried (see Stream).
COMMAND, FEEDBACK, STATE, STATS = 'command', 'feedback', 'state', 'stats'

_ROLE_TYPES = {'servo_cp': POSE, 'jaw_servo_jp': JOINTS, 'measured_cp': POSE,
               'setpoint_cp': POSE, 'measured_cf': WRENCH, 'measured_js': JOINTS}


@dataclass(frozen=True)
class Stream:
    """
    One topic carried by the link.

    ``source`` is the ROS topic read at the sending site, ``target`` the topic written at the
    receiving site; ``key`` the Zenoh key. ``kind``: ``command`` and ``feedback`` are
    latest-wins streams (DDS best effort; Zenoh CongestionControl.DROP, express),
    ``state`` is ``safety/state`` (DDS reliable + transient local at both ends; Zenoh
    reliable, CongestionControl.BLOCK), ``stats`` is ``network/stats`` (reliable, DROP).
    """

    name: str
    direction: str          # 'forward' (surgeon -> patient) or 'backward'
    kind: str
    source: str
    target: str
    key: str
    type_name: str

    @property
    def sender(self):
        """Return the role of the site that reads ``source`` and puts on ``key``."""
        return 'surgeon' if self.direction == 'forward' else 'patient'

    @property
    def emulated(self):
        """Whether the patient link's network emulation applies (the relay's streams)."""
        return self.kind in (COMMAND, FEEDBACK)


def check_namespace(namespace):
    """Return a problem text if ``namespace`` cannot prefix Zenoh keys, else None."""
    if not namespace:
        return 'must not be empty'
    if namespace.startswith('/') or namespace.endswith('/') or '//' in namespace:
        return (f'{namespace!r}: chunks separated by single slashes, no leading or trailing '
                "slash (e.g. 'telesurgery' or 'hospital/theatre2')")
    bad = sorted(set(namespace) & set('*$?#@ '))
    if bad:
        return f'{namespace!r}: no wildcard or special characters ({" ".join(bad)})'
    return None


def key_for(namespace, ros_name):
    """Return the zenoh-bridge-ros2dds key of a ROS name: ``<namespace>/<name>``."""
    return f'{namespace}/{ros_name.lstrip("/")}'


def token_key(namespace, role, session_hex='*'):
    """Return the liveliness token key of a site's link (``*``: any session)."""
    return f'{namespace}/{TOKEN_CHUNK}/{role}/{session_hex}'


def streams(arm=contract.DEFAULT_ARM, namespace=DEFAULT_NAMESPACE):
    """Return every stream the link carries, commands first."""
    topics = contract.arm_topics(arm)
    out = []
    for role in contract.FORWARD_ROLES:
        out.append(Stream(role, 'forward', COMMAND, contract.console_topic(topics[role]),
                          topics[role], key_for(namespace, topics[role]), _ROLE_TYPES[role]))
    for role in contract.BACKWARD_ROLES:
        out.append(Stream(role, 'backward', FEEDBACK, topics[role],
                          contract.console_topic(topics[role]),
                          key_for(namespace, topics[role]), _ROLE_TYPES[role]))
    out.append(Stream('safety_state', 'backward', STATE, contract.SAFETY_STATE_TOPIC,
                      contract.SAFETY_STATE_TOPIC,
                      key_for(namespace, contract.SAFETY_STATE_TOPIC), STRING))
    out.append(Stream('network_stats', 'backward', STATS, contract.NETWORK_STATS_TOPIC,
                      contract.NETWORK_STATS_TOPIC,
                      key_for(namespace, contract.NETWORK_STATS_TOPIC), DIAGNOSTICS))
    return out


# --- attachment -------------------------------------------------------------------------------

MAGIC = b'TSL1'
_ATTACHMENT = struct.Struct('>4s16sQ')
ATTACHMENT_SIZE = _ATTACHMENT.size


def new_session_id(clock_ns=time.time_ns, random_bytes=os.urandom):
    """Return a 16-byte session id: start time (ns, u64 big endian) + 8 random bytes."""
    return struct.pack('>Q', clock_ns()) + random_bytes(8)


def session_start_ns(session_id):
    """Return the start time (ns since the epoch) encoded in a session id."""
    return struct.unpack('>Q', session_id[:8])[0]


def encode_attachment(session_id, seq):
    """Return the attachment bytes of one sample."""
    return _ATTACHMENT.pack(MAGIC, session_id, seq)


def decode_attachment(data):
    """Return ``(session_id, seq)``, or None if ``data`` is not one of our attachments."""
    if data is None or len(data) != ATTACHMENT_SIZE:
        return None
    magic, session_id, seq = _ATTACHMENT.unpack(data)
    if magic != MAGIC:
        return None
    return session_id, seq


class Sequencer:
    """Sequence numbers per key for one session (from 1); not thread-safe per key."""

    def __init__(self, session_id):
        """Count for ``session_id``."""
        self.session_id = session_id
        self._next = {}

    def attachment(self, key):
        seq = self._next.get(key, 1)
        self._next[key] = seq + 1
        return encode_attachment(self.session_id, seq)


# --- replay guard -----------------------------------------------------------------------------

ACCEPTED = 'accepted'
DROP_CAUSES = ('duplicate', 'old', 'stale_session', 'malformed')


class ReplayGuard:
    """
    Accept each sample once, in order, from the peer's current session only.

    Per key it keeps the highest sequence number accepted and which of the ``window``
    numbers below it were seen. A number above the highest is accepted; one seen before is a
    ``duplicate``; one below the highest that was not seen is ``old`` (the link preserves
    order per key, so it can only be a replay or a very late copy). Sessions are ordered by
    their start time: a sample of a later session than the current one makes it current
    (the peer restarted) and retires the old one; a sample of an earlier or retired session
    is ``stale_session``. Samples without our attachment are ``malformed``.

    ``missing`` counts the sequence numbers skipped after the first sample of a key in a
    session: samples the sender put that never arrived (lost on the way, e.g. dropped by
    Zenoh under congestion), as opposed to those the sender never put.
    """

    def __init__(self, window=64, on_new_session=None):
        """Track ``window`` sequence numbers below the highest per key."""
        self.window = window
        self.on_new_session = on_new_session
        self.session = None
        self.retired = set()
        self._keys = {}                 # key -> (highest seq, bitmask of seen below it)
        self.counts = dict.fromkeys((ACCEPTED,) + DROP_CAUSES, 0)
        self.missing = 0
        self.sessions_seen = 0

    @property
    def dropped(self):
        return sum(self.counts[c] for c in DROP_CAUSES)

    def check(self, key, attachment):
        """Return ``'accepted'`` or the drop cause of one sample; count it."""
        verdict = self._verdict(key, attachment)
        self.counts[verdict] += 1
        return verdict

    def _verdict(self, key, attachment):
        decoded = decode_attachment(attachment)
        if decoded is None:
            return 'malformed'
        session_id, seq = decoded
        if seq < 1:
            return 'malformed'
        if session_id != self.session:
            if session_id in self.retired or (
                    self.session is not None
                    and session_start_ns(session_id) <= session_start_ns(self.session)):
                return 'stale_session'
            previous = self.session
            if previous is not None:
                self.retired.add(previous)
            self.session = session_id
            self._keys = {}
            self.sessions_seen += 1
            if self.on_new_session is not None:
                self.on_new_session(previous, session_id)
        highest, seen = self._keys.get(key, (0, 0))
        if seq > highest:
            shift = seq - highest
            if highest:
                self.missing += shift - 1
            seen = ((seen << shift) | (1 << (shift - 1))) & ((1 << self.window) - 1) \
                if highest else 0
            self._keys[key] = (seq, seen)
            return ACCEPTED
        if seq == highest:
            return 'duplicate'
        back = highest - seq                      # 1 = just below the highest
        if back <= self.window and seen & (1 << (back - 1)):
            return 'duplicate'
        return 'old'


# --- the peer ---------------------------------------------------------------------------------

WAITING, CONNECTED, LOST = 'waiting', 'connected', 'lost'


class PeerMonitor:
    """
    The other site's link as its liveliness tokens and transports show it.

    ``connection`` is ``waiting`` (never seen), ``connected`` (a token of the peer role is
    alive) or ``lost`` (it was, and is no more). Transports are the authenticated Zenoh
    connections with their certificate common names; one whose name is not the expected
    peer's is refused (the access control denies all it sends) and remembered.
    """

    def __init__(self, expected_cn, clock=time.monotonic):
        """Expect the certificate common name ``expected_cn`` ('' = any: insecure mode)."""
        self.expected_cn = expected_cn
        self.clock = clock
        self.tokens = {}                # session hex -> time it appeared
        self.transports = {}            # zid -> (common name or '', address)
        self.refused = {}               # zid -> (common name or '', address, time)
        self.connection = WAITING
        self.since = clock()
        self.losses = 0
        self.connects = 0

    def authorized(self, common_name):
        return not self.expected_cn or common_name == self.expected_cn

    def transport_opened(self, zid, common_name, address):
        """Note an open transport; return True if its peer is authorized."""
        common_name = common_name or ''
        if self.authorized(common_name):
            self.transports[zid] = (common_name, address)
            return True
        self.refused[zid] = (common_name, address, self.clock())
        return False

    def transport_closed(self, zid):
        self.transports.pop(zid, None)

    def token(self, session_hex, alive):
        """Note a peer token appearing or going; return the new connection state if changed."""
        if alive:
            self.tokens[session_hex] = self.clock()
        else:
            self.tokens.pop(session_hex, None)
        state = CONNECTED if self.tokens else (LOST if self.connection != WAITING else WAITING)
        if state == self.connection:
            return None
        self.connection = state
        self.since = self.clock()
        if state == CONNECTED:
            self.connects += 1
        elif state == LOST:
            self.losses += 1
        return state

    @property
    def identity(self):
        """Return the common names of the authorized peers now connected, comma-separated."""
        return ', '.join(sorted({cn or '(no certificate: insecure)'
                                 for cn, _addr in self.transports.values()})) or '-'

    def values(self):
        """Key/values for diagnostics."""
        return {
            'connection': self.connection,
            'connection_since_s': round(self.clock() - self.since, 3),
            'peer_identity': self.identity,
            'peer_addresses': ', '.join(sorted(a for _cn, a in self.transports.values())) or '-',
            'peer_sessions': len(self.tokens),
            'peer_losses': self.losses,
            'peer_connects': self.connects,
            'refused_peers': len(self.refused),
            'last_refused': ', '.join(
                f"{cn or 'no CN'} at {addr}" for cn, addr, _t in list(self.refused.values())[-3:])
            or '-',
        }


# --- what Zenoh logs ------------------------------------------------------------------------

_ANSI = re.compile(r'\x1b\[[0-9;]*m')
_LOG_LINE = re.compile(r'^\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(?:\S+\s+)?ThreadId\(\d+\)\s+'
                       r'(\S+?):\s(.*)$')
_HINT = '. Hint: increase the system open file limit.'
_NO_SUBJECT = re.compile(r'^([0-9a-f]+) did not match any configured ACL subject')


def parse_zenoh_log(line):
    """Return ``(level, target, message)`` of one Zenoh log line, or None if it is not one."""
    match = _LOG_LINE.match(_ANSI.sub('', line).rstrip('\n'))
    return match.groups() if match else None


def handshake_refusal(target, message):
    """
    Return ``(who, reason)`` if a Zenoh log message reports a failed TLS accept, else None.

    ``who`` is ``'peer'`` when this listener refused the peer (no certificate, another CA,
    ...) and ``'us'`` when the peer aborted the handshake (it refused this site's
    certificate: a TLS alert received).
    """
    if target.startswith('zenoh_link_tls') and message.endswith(_HINT):
        # zenoh 1.10 logs every failed accept of its TLS listener this way (the hint is
        # about the one error that is not a handshake failure: running out of sockets).
        reason = message[:-len(_HINT)]
        return ('us' if reason.startswith('received fatal alert') else 'peer'), reason
    return None


_CONNECT_FAILED = re.compile(r'^Unable to connect to configured peer (\S+?)! (.*?)\. Retry in')


_SOURCE_LOCATION = re.compile(r' at /\S+?:\d+\.?')
_LINK_PREFIX = re.compile(r'^Can not create a new \w+ link bound to [^:]+\)\): ')


def connect_failure(target, message):
    """Return ``(endpoint, reason)`` if Zenoh reports a failed connect attempt, else None."""
    if 'orchestrator' in target:
        match = _CONNECT_FAILED.match(message)
        if match:
            endpoint, reason = match.groups()
            reason = _LINK_PREFIX.sub('', _SOURCE_LOCATION.sub('', reason)).strip('[] .')
            return endpoint, reason
    return None


class Repeats:
    """Say each distinct thing once, then again only every ``period`` with a count."""

    def __init__(self, period=10.0, clock=time.monotonic):
        """Repeat a text at most once per ``period`` seconds."""
        self.period = period
        self.clock = clock
        self._seen = {}                 # text -> (last said, times suppressed since)

    def say(self, text):
        """Return the text to log now (with the suppressed count), or None to stay quiet."""
        now = self.clock()
        last, suppressed = self._seen.get(text, (None, 0))
        if last is not None and now - last < self.period:
            self._seen[text] = (last, suppressed + 1)
            return None
        self._seen[text] = (now, 0)
        return text + (f' ({suppressed} more since)' if suppressed else '')


def acl_unmatched_zid(target, message):
    """Return the Zenoh id of a peer the access control matched to no subject, else None."""
    if 'access_control' in target:
        match = _NO_SUBJECT.match(message)
        if match:
            return match.group(1)
    return None
