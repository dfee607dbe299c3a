"""The DDS transport set-up of every node (telesurgery_ros/transport.py)."""
from telesurgery_ros import transport


def test_localhost_discovery_becomes_a_udp_only_profile(tmp_path):
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_STATIC_PEERS': '10.0.0.7;'}
    text, warning = transport.configure(env, directory=str(tmp_path))
    assert warning is None and 'UDPv4 only' in text and '1 static peer' in text
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SYSTEM_DEFAULT'
    xml = open(env['FASTDDS_DEFAULT_PROFILES_FILE']).read()
    assert '<type>UDPv4</type>' in xml and 'SHM' not in xml.split('-->')[1]
    assert '<address>127.0.0.1</address>' in xml and '<address>10.0.0.7</address>' in xml
    again = dict(env)
    assert 'inherited' in transport.configure(again, directory=str(tmp_path))[0]
    assert again == env                          # idempotent for child processes


def test_other_ranges_use_the_builtin_udp_transport_and_user_choices_are_kept(tmp_path):
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    transport.configure(env, directory=str(tmp_path))
    assert env == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                   'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4'}
    user = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my_dds.xml'}
    text, warning = transport.configure(user, directory=str(tmp_path))
    assert user == {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my_dds.xml'}
    assert 'configured by the user' in text and 'shared memory' in warning
    other = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert transport.configure(other)[0] == 'DDS transport left to rmw_cyclonedds_cpp'


def test_children_and_tools(tmp_path):
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    transport.configure(env, directory=str(tmp_path))
    child = dict(env, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')   # isolated_environment()
    assert 'inherited' in transport.configure(child, directory=str(tmp_path))[0]
    assert child['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SYSTEM_DEFAULT'
    transport.middleware_default(child)
    assert child == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


def _fastdds_shm(pid):
    with open(f'/proc/{pid}/maps') as handle:
        return sorted({line.split()[-1] for line in handle if '/dev/shm/fastdds' in line})


def test_no_process_of_ours_maps_fast_dds_shared_memory(launcher, probe):
    """The nodes, and this test process (its probe is up), use no Fast DDS SHM segment."""
    import os
    from harness import wait_for
    relay = launcher.start('network_relay', params={'profile': 'none'})
    wait_for(lambda: any('relaying' in line or 'waiting for a publisher' in line
                         for line in relay.lines), 30.0, what='the relay up')
    print(f'\nrelay: {_fastdds_shm(relay.pid)}; test process: {_fastdds_shm(os.getpid())}')
    assert _fastdds_shm(relay.pid) == []
    assert _fastdds_shm(os.getpid()) == []
