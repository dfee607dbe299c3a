"""The link's pure logic: streams and keys, attachments, the replay guard, the peer monitor."""
import pytest

from telesurgery_ros.core import link


def test_streams_follow_the_relay_names_and_the_bridge_key_scheme():
    by_name = {s.name: s for s in link.streams('psm1', 'telesurgery')}
    servo = by_name['servo_cp']
    assert (servo.direction, servo.source, servo.target, servo.key) == (
        'forward', 'console/psm1/servo_cp', 'psm1/servo_cp', 'telesurgery/psm1/servo_cp')
    assert servo.sender == 'surgeon' and servo.kind == link.COMMAND and servo.emulated
    jaw = by_name['jaw_servo_jp']
    assert (jaw.source, jaw.target, jaw.key) == (
        'console/psm1/jaw/servo_jp', 'psm1/jaw/servo_jp', 'telesurgery/psm1/jaw/servo_jp')
    for name in ('measured_cp', 'setpoint_cp', 'measured_cf', 'measured_js'):
        s = by_name[name]
        assert s.direction == 'backward' and s.sender == 'patient' and s.emulated
        assert s.target == 'console/' + s.source and s.key == 'telesurgery/' + s.source
    state = by_name['safety_state']
    assert (state.source, state.target, state.kind, state.emulated) == (
        'safety/state', 'safety/state', link.STATE, False)
    assert by_name['network_stats'].key == 'telesurgery/network/stats'
    # zenoh-bridge-ros2dds: '<namespace>/<ROS name without its leading slash>'
    assert link.key_for('telesurgery', '/psm1/servo_cp') == 'telesurgery/psm1/servo_cp'
    assert link.token_key('telesurgery', 'surgeon', 'ab') == 'telesurgery/@site_link/surgeon/ab'


@pytest.mark.parametrize('namespace, ok', [
    ('telesurgery', True), ('hospital/theatre2', True), ('', False), ('/telesurgery', False),
    ('a//b', False), ('tele*', False), ('a/@b', False), ('a/b/', False)])
def test_namespace_check(namespace, ok):
    assert (link.check_namespace(namespace) is None) == ok


def test_attachment_round_trip_and_rejects():
    session = link.new_session_id(clock_ns=lambda: 1234, random_bytes=lambda n: b'r' * n)
    assert len(session) == 16 and link.session_start_ns(session) == 1234
    data = link.encode_attachment(session, 7)
    assert len(data) == link.ATTACHMENT_SIZE
    assert link.decode_attachment(data) == (session, 7)
    assert link.decode_attachment(None) is None
    assert link.decode_attachment(data[:-1]) is None
    assert link.decode_attachment(b'XXXX' + data[4:]) is None


def test_sequencer_counts_per_key_from_one():
    seq = link.Sequencer(b's' * 16)
    numbers = [link.decode_attachment(seq.attachment(k))[1] for k in 'aabab']
    assert numbers == [1, 2, 1, 3, 2]


def session(start, tag=b'x'):
    return link.new_session_id(clock_ns=lambda: start, random_bytes=lambda n: tag * n)


def test_replay_guard_in_order_duplicates_and_old():
    guard = link.ReplayGuard(window=8)
    s = session(100)
    att = [link.encode_attachment(s, n) for n in range(12)]
    assert [guard.check('k', att[n]) for n in (1, 2, 3, 5)] == ['accepted'] * 4
    assert guard.check('k', att[5]) == 'duplicate'          # the latest again
    assert guard.check('k', att[2]) == 'duplicate'          # seen, within the window
    assert guard.check('k', att[4]) == 'old'                # skipped, then late
    assert guard.check('other', att[1]) == 'accepted'       # each key has its own numbers
    for n in range(6, 12):
        assert guard.check('k', att[n]) == 'accepted'
    assert guard.check('k', att[1]) == 'old'                # beyond the window: old
    assert guard.check('k', link.encode_attachment(s, 0)) == 'malformed'
    assert guard.check('k', None) == 'malformed'
    assert guard.check('k', b'garbage') == 'malformed'
    assert guard.counts == {'accepted': 11, 'duplicate': 2, 'old': 2, 'stale_session': 0,
                            'malformed': 3}
    assert guard.dropped == 7
    assert guard.missing == 1                 # 4 was skipped (it came late: dropped as old)


def test_replay_guard_sessions():
    changes = []
    guard = link.ReplayGuard(on_new_session=lambda old, new: changes.append((old, new)))
    first, second, older = session(100, b'a'), session(200, b'b'), session(50, b'c')
    assert guard.check('k', link.encode_attachment(first, 10)) == 'accepted'
    # the peer restarted: a later session is accepted from 1 on and retires the first
    assert guard.check('k', link.encode_attachment(second, 1)) == 'accepted'
    assert guard.check('k', link.encode_attachment(first, 11)) == 'stale_session'
    assert guard.check('k', link.encode_attachment(older, 99)) == 'stale_session'
    same_time = session(200, b'z')
    assert guard.check('k', link.encode_attachment(same_time, 5)) == 'stale_session'
    assert guard.check('k', link.encode_attachment(second, 2)) == 'accepted'
    assert changes == [(None, first), (first, second)]
    assert guard.counts['stale_session'] == 3 and guard.sessions_seen == 2


def test_peer_monitor_states_and_refusals():
    now = [0.0]
    peer = link.PeerMonitor('surgeon-console', clock=lambda: now[0])
    assert peer.connection == link.WAITING
    assert peer.transport_opened('z1', 'surgeon-console', 'tls/127.0.0.1:5000')
    assert not peer.transport_opened('z2', 'patient-site', 'tls/127.0.0.1:5001')
    assert not peer.transport_opened('z3', None, 'tls/127.0.0.1:5002')
    assert peer.token('aa', True) == link.CONNECTED
    assert peer.token('bb', True) is None                   # a second session: still up
    now[0] = 2.0
    assert peer.token('aa', False) is None
    assert peer.token('bb', False) == link.LOST
    values = peer.values()
    assert values['connection'] == 'lost' and values['peer_losses'] == 1
    assert values['refused_peers'] == 2 and 'patient-site at tls/127.0.0.1:5001' in \
        values['last_refused']
    assert values['peer_identity'] == 'surgeon-console'
    peer.transport_closed('z1')
    assert peer.identity == '-'
    assert peer.token('cc', True) == link.CONNECTED and peer.connects == 2
    insecure = link.PeerMonitor('')
    assert insecure.transport_opened('z', '', 'tcp/127.0.0.1:1')


def test_zenoh_log_lines():
    line = ('\x1b[2m2026-12-02T07:09:12.859548Z\x1b[0m \x1b[33m WARN\x1b[0m acc-0 '
            'ThreadId(05) \x1b[2mzenoh_link_tls::unicast\x1b[0m\x1b[2m:\x1b[0m peer sent no '
            'certificates. Hint: increase the system open file limit.\n')
    level, target, message = link.parse_zenoh_log(line)
    assert (level, target) == ('WARN', 'zenoh_link_tls::unicast')
    assert link.handshake_refusal(target, message) == ('peer', 'peer sent no certificates')
    alert = 'received fatal alert: BadCertificate' + message[len('peer sent no certificates'):]
    assert link.handshake_refusal(target, alert) == ('us', 'received fatal alert: BadCertificate')
    failed = link.parse_zenoh_log(
        '2026-12-02T07:50:56Z DEBUG net-0 ThreadId(03) zenoh::net::runtime::orchestrator: '
        'Unable to connect to configured peer tls/127.0.0.2:17461! invalid peer certificate: '
        'NotValidForName. Retry in 500ms.')
    assert link.connect_failure(*failed[1:]) == ('tls/127.0.0.2:17461',
                                                 'invalid peer certificate: NotValidForName')
    refused = link.parse_zenoh_log(
        '2026-12-02T07:50:56Z DEBUG ThreadId(03) zenoh::net::runtime::orchestrator: Unable to '
        'connect to configured peer tls/127.0.0.1:7! Can not create a new TLS link bound to '
        'IpAddress(V4(Ipv4Addr([127, 0, 0, 1]))): [127.0.0.1:7: Connection refused (os error '
        '111) at /root/.cargo/git/x/io/tcp.rs:105.] at /root/.cargo/y/unicast.rs:378.. Retry '
        'in 1s.')
    assert link.connect_failure(*refused[1:]) == (
        'tls/127.0.0.1:7', '127.0.0.1:7: Connection refused (os error 111)')


def test_repeats_are_counted_not_repeated():
    now = [0.0]
    repeats = link.Repeats(period=10.0, clock=lambda: now[0])
    assert repeats.say('a') == 'a'
    assert repeats.say('a') is None and repeats.say('b') == 'b'
    now[0] = 11.0
    assert repeats.say('a') == 'a (1 more since)'
    assert repeats.say('a') is None
    other = '2026-12-02T07:09:08Z  INFO ThreadId(01) zenoh::net::routing::interceptor::' \
        'access_control: 7e8a127e did not match any configured ACL subject. Default'
    level, target, message = link.parse_zenoh_log(other)
    assert link.handshake_refusal(target, message) is None
    assert link.acl_unmatched_zid(target, message) == '7e8a127e'
    assert link.parse_zenoh_log('[INFO] [123] [site_link]: hello') is None
