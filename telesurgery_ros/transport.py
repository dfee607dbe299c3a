"""
The DDS transport of every node: UDP only, never Fast DDS shared memory.

Why: Fast DDS's shared-memory (SHM) transport guards each receiving port with an interprocess
mutex inside the shared segment. A writer takes the receiver's mutex in ``Port::try_push``
with a blocking lock, and a reader takes its own in ``Port::wait_pop``. A process that is
stopped (``kill -STOP``, a debugger, a swapped-out or starved process) while it holds one of
those mutexes blocks every other process that publishes to that port, inside ``publish()``,
until it runs again; and rclpy does not release the GIL in ``publish()``, so the whole Python
process stops with it. That is how a frozen ``network_relay`` stalled the watchdog (its
``safety/state`` publish waited in ``SharedMemManager::Port::try_push``) and then the slave,
and how the watchdog latched a false ESTOP (doc/arm.md has the evidence). Over UDP a stopped
reader only fills its own socket buffer: the kernel drops what does not fit and a sender
never waits.

How: :func:`configure` edits the environment of this process before ``rclpy.init()`` (called
by :func:`telesurgery_ros.rosutil.run_node`, so it applies however a node is started: the
runner, ``ros2 launch``, ``ros2 run``, the tests). With ``ROS_AUTOMATIC_DISCOVERY_RANGE`` =
``LOCALHOST`` rmw_fastrtps replaces the built-in transports with its own SHM + UDP pair and
ignores ``FASTDDS_BUILTIN_TRANSPORTS``, so the same discovery (unicast to 127.0.0.1 and the
static peers, no multicast) is written as a Fast DDS XML profile with a UDPv4 transport only,
and the discovery range is handed to that profile (``SYSTEM_DEFAULT``). With any other range
``FASTDDS_BUILTIN_TRANSPORTS=UDPv4`` does it. A transport the user configured (an XML
profiles file, ``FASTDDS_BUILTIN_TRANSPORTS``) or another RMW is left alone, with a warning
where it may bring SHM back.
"""
import hashlib
import os
import tempfile

PROFILE_PREFIX = 'telesurgery_fastdds_udp_'
_PROFILE_VARS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
_SHM_BUILTINS = ('DEFAULT', 'DEFAULTV6', 'SHM', 'LARGE_DATA', 'LARGE_DATAV6')

_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by telesurgery_ros (telesurgery_ros/transport.py): ROS_AUTOMATIC_DISCOVERY_RANGE
     LOCALHOST as rmw_fastrtps configures it, but with a UDPv4 transport only (no shared
     memory: a stopped peer can never block a publisher). -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>telesurgery_udpv4</transport_id>
        <type>UDPv4</type>
        <maxInitialPeersRange>32</maxInitialPeersRange>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="telesurgery_udp_localhost" is_default_profile="true">
      <rtps>
        <userTransports><transport_id>telesurgery_udpv4</transport_id></userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
        <builtin>
          <metatrafficUnicastLocatorList><locator><udpv4/></locator></metatrafficUnicastLocatorList>
          <initialPeersList>
{peers}
          </initialPeersList>
        </builtin>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
_PEER = '            <locator><udpv4><address>{}</address></udpv4></locator>'


def localhost_profile(static_peers=()):
    """Return the XML profile: UDPv4, unicast discovery to 127.0.0.1 and ``static_peers``."""
    peers = ['127.0.0.1'] + [p for p in static_peers if p and p != '127.0.0.1']
    return _XML.format(peers='\n'.join(_PEER.format(p) for p in peers))


def _write_profile(text, directory=None):
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = os.path.join(directory or tempfile.gettempdir(), f'{PROFILE_PREFIX}{digest}.xml')
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.' + PROFILE_PREFIX)
        with os.fdopen(fd, 'w') as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)          # atomic: concurrent nodes never read half a file
    return path


def _ours(path):
    return os.path.basename(path or '').startswith(PROFILE_PREFIX)


ORIGINAL_RANGE = 'TELESURGERY_DISCOVERY_RANGE'      # what the profile stands in for


def _hand_range_to_profile(env):
    # The profile carries the localhost discovery; LOCALHOST would make rmw_fastrtps replace
    # its transports with SHM + UDP again.
    env[ORIGINAL_RANGE] = 'LOCALHOST'
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SYSTEM_DEFAULT'
    env.pop('ROS_LOCALHOST_ONLY', None)


def middleware_default(environ=None):
    """
    Undo :func:`configure` in ``environ``: the middleware's own transports (SHM included).

    For a process that must behave like any other ROS tool (the tests' stand-in for a
    monitoring tool); call before ``rclpy.init()``.
    """
    env = os.environ if environ is None else environ
    for var in _PROFILE_VARS:
        if _ours(env.get(var)):
            env.pop(var)
    if env.pop(ORIGINAL_RANGE, None) == 'LOCALHOST':
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if env.get('FASTDDS_BUILTIN_TRANSPORTS') == 'UDPv4':
        env.pop('FASTDDS_BUILTIN_TRANSPORTS')


def configure(environ=None, directory=None):
    """
    Make this process's DDS participant UDP-only; return ``(description, warning or None)``.

    ``environ`` (default ``os.environ``) is edited in place; call before ``rclpy.init()``.
    Idempotent: a child started with an environment already configured keeps it.
    """
    env = os.environ if environ is None else environ
    rmw = env.get('RMW_IMPLEMENTATION') or 'rmw_fastrtps_cpp'
    if not rmw.startswith('rmw_fastrtps'):
        return f'DDS transport left to {rmw}', None
    user_files = [f'{v}={env[v]}' for v in _PROFILE_VARS if env.get(v) and not _ours(env[v])]
    builtin = env.get('FASTDDS_BUILTIN_TRANSPORTS', '')
    localhost = (env.get('ROS_LOCALHOST_ONLY') == '1'
                 or env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '').upper() == 'LOCALHOST')
    if user_files or (builtin and builtin.upper() != 'UDPV4'):
        given = ', '.join(user_files + ([f'FASTDDS_BUILTIN_TRANSPORTS={builtin}']
                                        if builtin else []))
        shm = localhost or builtin.upper() in _SHM_BUILTINS or bool(user_files)
        return (f'DDS transport as configured by the user ({given})',
                'the configured transport may include Fast DDS shared memory, with which a '
                'stopped peer can block publish() (see doc/arm.md); UDP only is the default'
                if shm else None)
    if any(_ours(env.get(v)) for v in _PROFILE_VARS):
        if localhost:                  # LOCALHOST set again (a child's environment)
            _hand_range_to_profile(env)
        return 'DDS transport UDPv4 only, discovery on localhost (inherited profile)', None
    if localhost:
        peers = [p.strip() for p in env.get('ROS_STATIC_PEERS', '').split(';') if p.strip()]
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = _write_profile(localhost_profile(peers),
                                                              directory)
        _hand_range_to_profile(env)
        return ('DDS transport UDPv4 only (no shared memory), discovery on localhost'
                + (f' and {len(peers)} static peer(s)' if peers else '')), None
    env['FASTDDS_BUILTIN_TRANSPORTS'] = 'UDPv4'
    scope = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') or 'default'
    return f'DDS transport UDPv4 only (no shared memory), discovery range {scope}', None
