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
    declare_parameters, DIAGNOSTICS_QOS, make_pose_stamped, run_node, SAFETY_QOS, STREAM_QOS)

SOURCE_PARAMS = (
    Param('topic', arm_topics()['servo_cp'], 'topic to publish PoseStamped on'),
    Param('rate', 1000.0, 'publication rate', 'Hz', low=1.0, high=5000.0),
    Param('frame_id', frames()['rcm'], 'header.frame_id of the poses'),
    Param('position', list(HOME_POSITION), 'constant tool-tip position (x, y, z)', 'm',
          item_type=float,
          check=lambda v: None if len(v) == 3 else 'needs exactly 3 values (x, y, z)'),
)

SINK_PARAMS = (
    Param('topics', [arm_topics()['servo_cp']], 'PoseStamped topics to record',
          item_type=str),
    Param('output', '', "path prefix of the <output>.npz/.json written on exit ('' = none)"),
    Param('diagnostics', False, 'also record /diagnostics and network/stats statuses'),
    Param('safety', False, 'also record safety/state messages'),
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
        self.create_timer(1.0 / cfg.rate, self._tick)
        self.get_logger().info(f'publishing on {cfg.topic} at {cfg.rate:g} Hz')

    def _tick(self):
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
                                     STREAM_QOS)
        if self.cfg.diagnostics:
            for topic in (DIAGNOSTICS_TOPIC, NETWORK_STATS_TOPIC):
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
        if not self.cfg.output:
            return
        arrays = {}
        for i, topic in enumerate(self.cfg.topics):
            rows = self.samples[topic]
            arrays[f'recv_ns{i}'] = np.array([r[0] for r in rows], dtype=np.int64)
            arrays[f'stamp_ns{i}'] = np.array([r[1] for r in rows], dtype=np.int64)
            arrays[f'pos{i}'] = np.array([r[2:] for r in rows], dtype=np.float64).reshape(-1, 3)
        np.savez(self.cfg.output + '.npz', **arrays)
        meta = {'topics': list(self.cfg.topics), 'statuses': self.statuses, 'safety': self.safety}
        with open(self.cfg.output + '.json', 'w') as handle:
            json.dump(meta, handle)


def main(args=None):
    argv = sys.argv[1:] if args is None else list(args)
    roles = {'source': Source, 'sink': Sink}
    if not argv or argv[0] not in roles:
        print('usage: python -m telesurgery_ros.bench.echo {source|sink} --ros-args ...',
              file=sys.stderr)
        sys.exit(2)
    sys.exit(run_node(roles[argv[0]], [sys.argv[0], *argv[1:]]))


if __name__ == '__main__':
    main()
