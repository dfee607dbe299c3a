"""
network_relay with real ROS nodes.

A 500 Hz stream through a constant delay, statistics, blackout, and invalid profiles
rejected at start and at run time.
"""
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from harness import wait_for
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool

from telesurgery_ros.core.scheduler import MAX_LEAD
from telesurgery_ros.rosutil import DIAGNOSTICS_QOS

pytestmark = pytest.mark.ros

IN, OUT = 'relay_test/in', 'relay_test/out'
BACK_IN, BACK_OUT = 'relay_test/back_in', 'relay_test/back_out'
# Reliable on purpose: the relay matches the publisher's QoS, so the whole path is reliable
# and the count of messages is exact even on a loaded machine.
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5000,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
DELAY = 0.05


def relay_params(**extra):
    params = {'profile': 'none', 'overrides': f'both.delay={DELAY}',
              'forward_topics': f'{IN}>{OUT}', 'backward_topics': f'{BACK_IN}>{BACK_OUT}',
              'stats_rate': 5.0, 'discovery_period': 0.1,
              # deep queues: a relay stalled by a loaded machine must not overwrite samples
              'qos.depth': 5000}
    params.update(extra)
    return params


def pose(index):
    msg = PoseStamped()
    msg.header.frame_id = str(index)
    msg.pose.orientation.w = 1.0
    return msg


def connect(probe, publisher, out_topic, timeout=30.0):
    """Send warm-up messages until one comes back through the relay, then clear."""
    def through():
        publisher.publish(pose(-1))
        return probe.messages(out_topic)

    wait_for(through, timeout, interval=0.2, what=f'a message through the relay on {out_topic}')
    time.sleep(2 * DELAY + 0.1)
    probe.clear(out_topic)


def received(probe, topic):
    """Return ``(receive_time, index)`` of the streamed poses (warm-up ones left out)."""
    return [(t, int(m.header.frame_id)) for t, m in probe.timed(topic)
            if m.header.frame_id != '-1']


def stream(publisher, count, rate):
    """Publish ``count`` poses at ``rate`` Hz; return the monotonic send times."""
    sent = []
    period = 1.0 / rate
    start = time.monotonic()
    for i in range(count):
        target = start + i * period
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent.append(time.monotonic())
        publisher.publish(pose(i))
    return np.array(sent)


def status_of(array, direction):
    for status in array.status:
        if status.name == f'network_relay: {direction}':
            return {kv.key: kv.value for kv in status.values}
    return None


def set_param(probe, name, value, kind):
    field = {ParameterType.PARAMETER_STRING: 'string_value',
             ParameterType.PARAMETER_BOOL: 'bool_value',
             ParameterType.PARAMETER_DOUBLE: 'double_value'}[kind]
    request = SetParameters.Request(parameters=[ParameterMsg(
        name=name, value=ParameterValue(type=kind, **{field: value}))])
    return probe.call(SetParameters, '/network_relay/set_parameters', request).results[0]


def get_param(probe, name):
    response = probe.call(GetParameters, '/network_relay/get_parameters',
                          GetParameters.Request(names=[name]))
    return response.values[0]


def test_500hz_stream_through_constant_delay(launcher, probe):
    relay = launcher.start('network_relay', params=relay_params())
    publisher = probe.create_publisher(PoseStamped, IN, RELIABLE)
    probe.record(PoseStamped, OUT, RELIABLE)
    probe.record(DiagnosticArray, 'network/stats', DIAGNOSTICS_QOS)
    connect(probe, publisher, OUT)
    count = 1000
    sent = stream(publisher, count, rate=500.0)
    wait_for(lambda: len(received(probe, OUT)) >= count, 60.0,
             what=f'{count} relayed messages')
    time.sleep(0.3)                    # anything extra (duplicates) would show up now
    got = received(probe, OUT)
    assert [i for _t, i in got] == list(range(count)), 'order and count as configured'
    latency = np.array([t for t, _i in got]) - sent
    print(f'relayed {count} messages at {count / (sent[-1] - sent[0]):.0f} Hz through '
          f'{DELAY * 1e3:.0f} ms: latency min {latency.min() * 1e3:.3f} ms, p50 '
          f'{np.median(latency) * 1e3:.3f} ms, p99 {np.percentile(latency, 99) * 1e3:.3f} ms')
    assert latency.min() >= DELAY, 'no message may arrive before its configured delay'

    def stats():
        latest = probe.latest('network/stats')
        forward = latest and status_of(latest, 'forward')
        return forward if forward and int(forward['messages_out']) >= count + 1 else None

    forward = wait_for(stats, 20.0, what='network/stats counting the stream')
    for key in ('messages_in', 'messages_out', 'dropped_loss', 'dropped_outage',
                'dropped_queue', 'duplicated', 'reordered', 'delay_p50_ms', 'delay_p99_ms',
                'loss_ratio', 'queue_depth', 'profile', 'release_lead_ms'):
        assert key in forward, key
    lead_ms = float(forward['release_lead_ms'])
    print(f"relay's own view: p50 {forward['delay_p50_ms']} ms, p99 {forward['delay_p99_ms']} "
          f'ms (arrival in the relay to publish); the release thread wakes {lead_ms:.3f} ms '
          'early (its median wake-up latency)')
    assert forward['profile'] == 'none'
    assert int(forward['dropped_loss']) == int(forward['reordered']) == 0
    # The release thread may wake up to MAX_LEAD early, never more.
    assert 0.0 <= lead_ms <= MAX_LEAD * 1e3
    assert (DELAY - MAX_LEAD) * 1e3 <= float(forward['delay_p50_ms']) < DELAY * 1e3 + 20.0
    assert relay.running()
    # the relay matched the QoS of the publisher it relays (reliable here)
    assert '(geometry_msgs/msg/PoseStamped, reliable, volatile)' in relay.output()


def test_blackout_service_cuts_and_restores(launcher, probe):
    launcher.start('network_relay', params=relay_params(overrides='both.delay=1.0'))
    forward = probe.create_publisher(PoseStamped, IN, RELIABLE)
    backward = probe.create_publisher(PoseStamped, BACK_IN, RELIABLE)
    probe.record(PoseStamped, OUT, RELIABLE)
    probe.record(PoseStamped, BACK_OUT, RELIABLE)
    probe.record(DiagnosticArray, 'network/stats', DIAGNOSTICS_QOS)
    wait_for(lambda: (forward.publish(pose(-1)), probe.messages(OUT))[1], 30.0, interval=0.2,
             what='forward path up')
    wait_for(lambda: (backward.publish(pose(-1)), probe.messages(BACK_OUT))[1], 30.0,
             interval=0.2, what='backward path up')
    for i in range(5):
        forward.publish(pose(i))               # in flight for 1 s ...
    assert probe.call(SetBool, 'network/blackout', SetBool.Request(data=True)).success
    time.sleep(1.2)                            # ... and dropped by the blackout
    for i in range(5, 10):
        forward.publish(pose(i))
        backward.publish(pose(i))
    time.sleep(1.2)
    assert received(probe, OUT) == [] and received(probe, BACK_OUT) == []
    assert get_param(probe, 'blackout').bool_value is True

    def counted():
        latest = probe.latest('network/stats')
        status = latest and status_of(latest, 'forward')
        return status if status and int(status['dropped_outage']) >= 10 else None

    status = wait_for(counted, 10.0, what='dropped_outage counting in-flight and new messages')
    assert status['blackout'] == 'True'
    assert probe.call(SetBool, 'network/blackout', SetBool.Request(data=False)).success
    forward.publish(pose(10))
    wait_for(lambda: received(probe, OUT), 10.0, what='the link restored after the blackout')
    assert [i for _t, i in received(probe, OUT)] == [10]


def test_invalid_runtime_change_is_rejected_and_previous_settings_kept(launcher, probe):
    relay = launcher.start('network_relay', params=relay_params())
    publisher = probe.create_publisher(PoseStamped, IN, RELIABLE)
    probe.record(PoseStamped, OUT, RELIABLE)
    connect(probe, publisher, OUT)
    bad = [('profile', 'atlantis', 'is unknown'),
           ('overrides', 'forward.delay=-0.5', 'field forward.delay must be 0.0 to 60.0 s'),
           ('overrides', 'backward.loss.p=1.5', 'field backward.loss.p must be 0.0 to 1.0'),
           ('overrides', 'both.distribution=cauchy', 'field forward.distribution must be one')]
    for name, value, needle in bad:
        result = set_param(probe, name, value, ParameterType.PARAMETER_STRING)
        assert not result.successful, (name, value)
        assert needle in result.reason, result.reason
    assert get_param(probe, 'profile').string_value == 'none'
    assert get_param(probe, 'overrides').string_value == f'both.delay={DELAY}'
    # still relaying with the previous delay
    sent = stream(publisher, 50, rate=100.0)
    wait_for(lambda: len(received(probe, OUT)) >= 50, 20.0, what='relaying after rejections')
    got = received(probe, OUT)
    assert [i for _t, i in got] == list(range(50))
    latency = np.array([t for t, _i in got]) - sent
    assert latency.min() >= DELAY
    # an accepted change takes effect at once
    result = set_param(probe, 'overrides', 'forward.delay=0.2', ParameterType.PARAMETER_STRING)
    assert result.successful, result.reason
    probe.clear(OUT)
    sent = time.monotonic()
    publisher.publish(pose(1000))
    wait_for(lambda: received(probe, OUT), 20.0, what='a message with the new delay')
    arrival = received(probe, OUT)[0][0]
    print(f'after the change: {(arrival - sent) * 1e3:.1f} ms (configured 200 ms)')
    assert arrival - sent >= 0.2
    assert 'rejected parameter change' in relay.output()
    assert "network changed: profile 'none' (overrides: forward.delay=0.2)" in relay.output()


@pytest.mark.parametrize('params, needles', [
    ({'profile': 'atlantis'}, ["'atlantis' is unknown; known profiles:"]),
    ({'profile': 'none',
      'overrides': 'forward.delay=-1; backward.loss.p=1.5; both.distribution=cauchy'},
     ['field forward.delay must be 0.0 to 60.0 s, got -1.0',
      'field backward.loss.p must be 0.0 to 1.0, got 1.5',
      "field forward.distribution must be one of 'uniform', 'normal', 'pareto', "
      "'paretonormal', got 'cauchy'"]),
    ({'stats_rate': 0.0}, ["parameter 'stats_rate' must be 0.1 to 50.0 Hz, got 0.0"]),
])
def test_invalid_configuration_at_start_exits_2(launcher, params, needles):
    relay = launcher.start('network_relay', params=params)
    assert relay.wait(60) == 2
    output = relay.output()
    for needle in needles:
        assert needle in output, output
    assert 'Traceback' not in output


def test_qos_matching_and_topic_pairs():
    from types import SimpleNamespace

    from telesurgery_ros.core.params import ConfigError
    from telesurgery_ros.nodes.network_relay import default_pairs, matched_qos, parse_pairs
    from telesurgery_ros.rosutil import SAFETY_QOS, STREAM_QOS

    def infos(*profiles):
        return [SimpleNamespace(qos_profile=p) for p in profiles]

    best = matched_qos(infos(STREAM_QOS, SAFETY_QOS))
    assert best.reliability == ReliabilityPolicy.BEST_EFFORT
    assert best.durability == DurabilityPolicy.VOLATILE
    latched = matched_qos(infos(SAFETY_QOS, SAFETY_QOS), depth=7)
    assert latched.reliability == ReliabilityPolicy.RELIABLE
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL and latched.depth == 7
    forced = matched_qos(infos(STREAM_QOS), reliability='reliable')
    assert forced.reliability == ReliabilityPolicy.RELIABLE
    assert default_pairs('psm2', 'forward') == [
        ('console/psm2/servo_cp', 'psm2/servo_cp'),
        ('console/psm2/jaw/servo_jp', 'psm2/jaw/servo_jp')]
    assert ('psm1/measured_cf', 'console/psm1/measured_cf') in default_pairs('psm1', 'backward')
    assert len(default_pairs('psm1', 'backward')) == 4
    assert parse_pairs(' a>b ; c/d > e ;', 'forward_topics') == [('a', 'b'), ('c/d', 'e')]
    with pytest.raises(ConfigError, match="parameter 'forward_topics': expected"):
        parse_pairs('a', 'forward_topics')
