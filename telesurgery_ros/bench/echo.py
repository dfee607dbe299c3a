"""
Bench-side processes: a stamped pose ``source`` and a recording ``sink``.

``python -m telesurgery_ros.bench.echo source --ros-args -p topic:=psm1/servo_cp -p rate:=1000.0``
publishes geometry_msgs/PoseStamped at a fixed rate, ``header.stamp`` = the system clock at
publication. ``python -m telesurgery_ros.bench.echo sink --ros-args -p topics:=[...]
-p output:=/tmp/x`` records, for every PoseStamped received, the system-clock receive time, the
header stamp and the position, plus /diagnostics statuses and ``safety/state`` if asked, and
writes ``<output>.npz`` and ``<output>.json`` when it is stopped (SIGINT). Both clocks are the
machine's CLOCK_REALTIME, so ``receive - stamp`` is the one-way latency, with no clock sync.
Together they make the bare-hop baseline: two processes, one DDS hop, nothing else.

``python -m telesurgery_ros.bench.echo record --ros-args -p output:=/tmp/x.mcap`` records what
``telesurgery-demo`` records (:func:`telesurgery_ros.demo.recorded_topics`, raw CDR to MCAP
with :class:`telesurgery_ros.recorder.McapRecorder`): the recorder of the control-loop suite.
"""
import json
import signal
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.node import Node
from std_msgs.msg import String

from telesurgery_ros.core.contract import (
    arm_topics, DIAGNOSTICS_TOPIC, frames, HOME_ORIENTATION, HOME_POSITION, NETWORK_STATS_TOPIC,
    SAFETY_STATE_TOPIC)
from telesurgery_ros.core.params import Param
from telesurgery_ros.rosutil import (
    declare_parameters, DIAGNOSTICS_QOS, make_pose_stamped, RECORD_QOS, run_node, SAFETY_QOS,
    STREAM_QOS)

SOURCE_PARAMS = (
    Param('topic', arm_topics()['servo_cp'], 'topic to publish PoseStamped on'),
    Param('rate', 1000.0, 'publication rate', 'Hz', low=1.0, high=5000.0),
    Param('frame_id', frames()['rcm'], 'header.frame_id of the poses'),
    Param('position', list(HOME_POSITION), 'constant tool-tip position (x, y, z)', 'm',
          item_type=float,
          check=lambda v: None if len(v) == 3 else 'needs exactly 3 values (x, y, z)'),
    Param('gap_period', 0.0, 'stop publishing for gap_length once per this period (0: never)',
          's', low=0.0, high=60.0),
    Param('gap_length', 0.0, 'length of each pause (see gap_period)', 's', low=0.0,
          high=60.0),
)

SINK_PARAMS = (
    Param('topics', [arm_topics()['servo_cp']], 'PoseStamped topics to record',
          item_type=str),
    Param('output', '', "path prefix of the <output>.npz/.json written on exit ('' = none)"),
    Param('diagnostics', False, 'also record /diagnostics and network/stats statuses'),
    Param('safety', False, 'also record safety/state messages'),
    Param('status_topics', [], 'more DiagnosticArray topics to record (e.g. /arm1/diagnostics)',
          item_type=str),
)

RECORD_PARAMS = (
    Param('output', 'bench.mcap', 'MCAP file to write'),
    Param('arm', 'psm1', 'arm namespace of the recorded topics'),
)


class Source(Node):
    """Publish a constant pose at a fixed rate, stamped with the system clock."""

    def __init__(self):
        super().__init__('bench_source')
        cfg = declare_parameters(self, SOURCE_PARAMS)
        self._pub = self.create_publisher(PoseStamped, cfg.topic, STREAM_QOS)
        self._msg = make_pose_stamped(cfg.position, HOME_ORIENTATION, cfg.frame_id,
                                      self.get_clock().now().to_msg())
        self.sent = 0
        self.cfg = cfg
        self._t0 = time.monotonic()
        self.create_timer(1.0 / cfg.rate, self._tick)
        self.get_logger().info(
            f'publishing on {cfg.topic} at {cfg.rate:g} Hz' + (
                f', pausing {cfg.gap_length:g} s every {cfg.gap_period:g} s'
                if cfg.gap_period > 0 else ''))

    def _tick(self):
        cfg = self.cfg
        if cfg.gap_period > 0 and (time.monotonic() - self._t0) % cfg.gap_period > (
                cfg.gap_period - cfg.gap_length):
            return
        now = time.time_ns()
        stamp = self._msg.header.stamp
        stamp.sec, stamp.nanosec = divmod(now, 1_000_000_000)
        self._pub.publish(self._msg)
        self.sent += 1

    def on_shutdown(self):
        self.get_logger().info(f'sent {self.sent} messages')


class Sink(Node):
    """Record receive time, stamp and position of PoseStamped topics (and status streams)."""

    def __init__(self):
        super().__init__('bench_sink')
        self.cfg = declare_parameters(self, SINK_PARAMS)
        self.samples = {topic: [] for topic in self.cfg.topics}
        self.statuses = []
        self.safety = []
        for topic in self.cfg.topics:
            self.create_subscription(PoseStamped, topic, self._pose_callback(topic),
                                     RECORD_QOS)
        status_topics = list(self.cfg.status_topics)
        if self.cfg.diagnostics:
            status_topics += [DIAGNOSTICS_TOPIC, NETWORK_STATS_TOPIC]
        for topic in status_topics:
            self.create_subscription(DiagnosticArray, topic, self._status_callback(topic),
                                     DIAGNOSTICS_QOS)
        if self.cfg.safety:
            self.create_subscription(String, SAFETY_STATE_TOPIC, self._on_safety, SAFETY_QOS)
        self.get_logger().info(f'recording {", ".join(self.cfg.topics)}')

    def _pose_callback(self, topic):
        store = self.samples[topic]

        def callback(msg):
            now = time.time_ns()
            if not store:
                self.get_logger().info(f'first message on {topic}')
            s, p = msg.header.stamp, msg.pose.position
            store.append((now, s.sec * 1_000_000_000 + s.nanosec, p.x, p.y, p.z))

        return callback

    def _status_callback(self, topic):
        def callback(msg):
            now = time.time_ns()
            for status in msg.status:
                self.statuses.append({
                    'topic': topic, 'recv_ns': now, 'name': status.name,
                    'level': int.from_bytes(status.level, 'little')
                    if isinstance(status.level, bytes) else int(status.level),
                    'message': status.message,
                    'values': {kv.key: kv.value for kv in status.values}})

        return callback

    def _on_safety(self, msg):
        self.safety.append({'recv_ns': time.time_ns(), 'data': msg.data})

    def on_shutdown(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)     # let nothing cut the writing short
        counts = {topic: len(v) for topic, v in self.samples.items()}
        self.get_logger().info(f'received {counts}')
        if self.cfg.output:
            write_samples(self.cfg.output, self.cfg.topics, self.samples, self.statuses,
                          self.safety)


def write_samples(output, topics, samples, statuses=(), safety=()):
    """
    Write what a sink recorded as ``output.npz`` and ``output.json`` (read by bench Recording).

    ``samples``: per topic, rows of (receive ns, stamp ns, x, y, z).
    """
    arrays = {}
    for i, topic in enumerate(topics):
        rows = samples[topic]
        arrays[f'recv_ns{i}'] = np.array([r[0] for r in rows], dtype=np.int64)
        arrays[f'stamp_ns{i}'] = np.array([r[1] for r in rows], dtype=np.int64)
        arrays[f'pos{i}'] = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 3)
    np.savez(output + '.npz', **arrays)
    meta = {'topics': list(topics), 'statuses': list(statuses), 'safety': list(safety)}
    with open(output + '.json', 'w') as handle:
        json.dump(meta, handle)


class Recorder(Node):
    """Record the demo's topics raw to MCAP, as a recording tool next to the stack does."""

    def __init__(self):
        super().__init__('bench_recorder')
        from telesurgery_ros.demo import recorded_topics
        from telesurgery_ros.nodes.network_relay import import_message
        from telesurgery_ros.recorder import McapRecorder
        cfg = declare_parameters(self, RECORD_PARAMS)
        self.recorder = McapRecorder(cfg.output)
        self.subs = []
        for topic, type_name, role in recorded_topics(cfg.arm):
            qos = {'safety': SAFETY_QOS, 'stats': DIAGNOSTICS_QOS,
                   'diagnostics': DIAGNOSTICS_QOS}.get(role, STREAM_QOS)
            self.subs.append(self.create_subscription(
                import_message(type_name), topic, self._writer('/' + topic, type_name), qos,
                raw=True))
        self.get_logger().info(f'recording {len(self.subs)} topics to {cfg.output}')

    def _writer(self, topic, type_name):
        write = self.recorder.write

        def on_message(data):
            write(topic, type_name, data, time.time_ns())
        return on_message

    def on_shutdown(self):
        self.recorder.close()
        self.get_logger().info(f'recorded {self.recorder.counts}')


def main(args=None):
    argv = sys.argv[1:] if args is None else list(args)
    roles = {'source': Source, 'sink': Sink, 'record': Recorder}
    if not argv or argv[0] not in roles:
        print('usage: python -m telesurgery_ros.bench.echo {source|sink|record} --ros-args ...',
              file=sys.stderr)
        sys.exit(2)
    sys.exit(run_node(roles[argv[0]], [sys.argv[0], *argv[1:]]))


if __name__ == '__main__':
    main()
