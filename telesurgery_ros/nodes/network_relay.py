"""
network_relay: the emulated long-distance link between the surgeon's and the patient's sites.

For each configured topic pair the relay discovers the publisher's message type and QoS from
the graph, subscribes with ``raw=True`` and republishes the serialized bytes unchanged after
the impairments of its direction (``forward``: console -> patient, ``backward``: patient ->
console; see :mod:`telesurgery_ros.core.netem`). Messages leave at their scheduled time from
a dedicated release thread (:mod:`telesurgery_ros.core.scheduler`), under ``SCHED_FIFO`` at
``realtime_priority`` where the system permits it (one warning and normal scheduling where
not). A path keeps the order of each topic unless its profile reorders explicitly
(``reorder``, ``preserve_order: false``); ``reordered`` on network/stats counts the messages
a receiver got after a later one of the same topic.

Parameters: ``profile`` (a name in ``config/network_profiles.yaml``), ``overrides``
(``'forward.delay=0.05; both.loss.p=0.01'``), ``seed``, ``blackout`` and ``stats_rate`` can
change at run time; a rejected change names the field and keeps the previous settings.
Service ``network/blackout`` (std_srvs/SetBool) cuts both directions. Statistics per direction
on ``network/stats`` and ``/diagnostics``.
"""
from dataclasses import dataclass, field
import importlib
import sys

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool

from telesurgery_ros.core.contract import (
    arm_topics, BACKWARD_ROLES, BLACKOUT_SERVICE, console_topic, DEFAULT_ARM,
    DIAGNOSTICS_TOPIC, FORWARD_ROLES, NETWORK_STATS_TOPIC)
from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.core.realtime import shorten_gil_switch
from telesurgery_ros.core.scheduler import ReleaseScheduler
from telesurgery_ros.emulation import DIRECTIONS, Emulation, PARAMETERS as EMULATION
from telesurgery_ros.rosutil import (
    declare_parameters, diagnostic_array, DIAGNOSTICS_QOS, executor_priority_param,
    realtime_executor, run_node)

_PAIRS_HELP = ("'input>output' topic pairs separated by ';'; empty = the arm's")

PARAMETERS = EMULATION + (
    Param('arm', DEFAULT_ARM, 'arm namespace of the default topic pairs', read_only=True),
    Param('forward_topics', '', 'console -> patient ' + _PAIRS_HELP + ' command topics',
          read_only=True),
    Param('backward_topics', '', 'patient -> console ' + _PAIRS_HELP + ' feedback topics',
          read_only=True),
    Param('qos.reliability', 'auto', "QoS reliability of the relayed topics; 'auto' matches "
          'the publishers (reliable only if all are)', choices=('auto', 'reliable',
                                                                'best_effort'),
          read_only=True),
    Param('qos.durability', 'auto', "QoS durability of the relayed topics; 'auto' matches "
          'the publishers (transient_local only if all are)',
          choices=('auto', 'volatile', 'transient_local'), read_only=True),
    Param('qos.depth', 100, 'queue depth of the relay subscriptions and publishers',
          'messages', low=1, high=10000, read_only=True),
    Param('discovery_period', 0.5, 'how often to look for the publishers not found yet and '
          'whether each target has subscribers (a pair is relayed only while it has)', 's',
          low=0.05, high=10.0, read_only=True),
    Param('realtime_priority', 45,
          'SCHED_FIFO priority of the release thread, used where the system permits it (root '
          'or CAP_SYS_NICE; refused: one warning, normal scheduling); 0: normal scheduling; '
          "below the slave's control loop (50) on a shared machine", low=0, high=98,
          read_only=True),
    executor_priority_param(44),
)


def parse_pairs(text, name):
    """Parse ``'a>b; c>d'`` into ``[('a', 'b'), ...]``; raise ConfigError naming ``name``."""
    pairs, problems = [], []
    for item in text.split(';'):
        item = item.strip()
        if not item:
            continue
        src, sep, dst = (part.strip() for part in item.partition('>'))
        if not sep or not src or not dst or src == dst:
            problems.append(f"parameter '{name}': expected 'input_topic>output_topic' with "
                            f'two different topics, got {item!r}')
        else:
            pairs.append((src, dst))
    if problems:
        raise ConfigError(problems)
    return pairs


def default_pairs(arm, direction):
    """Return the pairs of ARCHITECTURE.md: console copies <-> patient topics of ``arm``."""
    topics = arm_topics(arm)
    if direction == 'forward':
        return [(console_topic(topics[r]), topics[r]) for r in FORWARD_ROLES]
    return [(topics[r], console_topic(topics[r])) for r in BACKWARD_ROLES]


def import_message(type_name):
    """Import a message class from its graph name, e.g. ``'geometry_msgs/msg/PoseStamped'``."""
    package, _sep, rest = type_name.partition('/')
    kind, _sep, name = rest.partition('/')
    module = importlib.import_module(f'{package}.{kind}')
    return getattr(module, name)


def matched_qos(infos, reliability='auto', durability='auto', depth=100):
    """Return the QoS that matches every publisher in ``infos`` (topic_tools' rule)."""
    profiles = [info.qos_profile for info in infos]
    rel = _policy(reliability, 'reliable', profiles, 'reliability',
                  ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT)
    dur = _policy(durability, 'transient_local', profiles, 'durability',
                  DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel,
                      durability=dur)


def _policy(setting, strong_name, profiles, attribute, strong, weak):
    """Pick ``strong`` only if asked for, or on 'auto' if every publisher offers it."""
    if setting == 'auto':
        return strong if profiles and all(
            getattr(p, attribute) == strong for p in profiles) else weak
    return strong if setting == strong_name else weak


@dataclass
class Pair:
    """One relayed topic pair and its ROS entities once its publisher was discovered."""

    direction: str
    source: str
    target: str
    type_name: str = ''
    subscription: object = None
    publisher: object = None
    announced: bool = False
    extra: dict = field(default_factory=dict)


class NetworkRelay(Node):
    """Relays topic pairs through a per-direction impairment model."""

    def __init__(self):
        super().__init__('network_relay')
        # The release thread must get the GIL soon after its wake-up time: a short switch
        # interval bounds how long the executor thread can hold it.
        shorten_gil_switch()
        self.emulation = Emulation(self)
        self.config = declare_parameters(self, PARAMETERS, on_change=self._on_change,
                                         cross_check=self._cross_check)
        cfg = self.config
        self.emulation.start(cfg)
        self.pairs = []
        for direction in DIRECTIONS:
            text = getattr(cfg, f'{direction}_topics')
            given = parse_pairs(text, f'{direction}_topics')
            for src, dst in given or default_pairs(cfg.arm, direction):
                self.pairs.append(Pair(direction, src, dst))
        self._scheduler = ReleaseScheduler(self._publish, on_error=self._publish_failed,
                                           priority=cfg.realtime_priority).start()
        self.emulation.scheduler = self._scheduler
        schedule = self._scheduler.schedule
        if cfg.realtime_priority > 0 and not schedule.realtime:
            self.get_logger().warning(
                f'realtime_priority {cfg.realtime_priority} refused ({schedule.refused}): the '
                'release thread runs with normal scheduling')
        else:
            self.get_logger().info(f'release thread: {schedule.describe()}')
        self._stats_pub = self.create_publisher(DiagnosticArray, NETWORK_STATS_TOPIC,
                                                DIAGNOSTICS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC,
                                               DIAGNOSTICS_QOS)
        self.create_service(SetBool, BLACKOUT_SERVICE, self.emulation.on_blackout_service)
        self._stats_timer = self.create_timer(1.0 / cfg.stats_rate, self._publish_stats)
        self._discovery_timer = self.create_timer(cfg.discovery_period, self._discover)
        for pair in self.pairs:
            self.get_logger().info(f'{pair.direction}: {pair.source} -> {pair.target}')
        self._discover()
        self.executor_schedule = realtime_executor(self, cfg.executor_priority)

    # --- configuration ------------------------------------------------------------------

    def _cross_check(self, cfg):
        problems = self.emulation.check(cfg)
        if problems:
            return problems
        try:
            for direction in DIRECTIONS:
                parse_pairs(getattr(cfg, f'{direction}_topics'), f'{direction}_topics')
        except ConfigError as exc:
            return exc.problems
        return []

    def _on_change(self, cfg, names):
        self.emulation.on_change(cfg, names)
        if 'stats_rate' in names:
            self._stats_timer.cancel()
            self.destroy_timer(self._stats_timer)
            self._stats_timer = self.create_timer(1.0 / cfg.stats_rate, self._publish_stats)

    # --- discovery ------------------------------------------------------------------------

    def _discover(self):
        cfg = self.config
        for pair in self.pairs:
            if pair.publisher is not None:
                self._follow_demand(pair)
                continue
            infos = [i for i in self.get_publishers_info_by_topic(pair.source)
                     if not (i.node_name == self.get_name()
                             and i.node_namespace == self.get_namespace())]
            if not infos:
                if not pair.announced:
                    pair.announced = True
                    self.get_logger().info(f'waiting for a publisher on {pair.source}')
                continue
            type_name = infos[0].topic_type
            try:
                msg_type = import_message(type_name)
            except (ImportError, AttributeError) as exc:
                if pair.extra.get('bad_type') != type_name:
                    pair.extra['bad_type'] = type_name
                    self.get_logger().error(
                        f'cannot relay {pair.source}: message type {type_name} is not '
                        f'importable ({exc})')
                continue
            qos = matched_qos(infos, cfg.qos.reliability, cfg.qos.durability, cfg.qos.depth)
            pair.type_name = type_name
            pair.extra.update(msg_type=msg_type, qos=qos, idle=0)
            pair.publisher = self.create_publisher(msg_type, pair.target, qos)
            self.get_logger().info(
                f'relaying {pair.direction} {pair.source} -> {pair.target} ({type_name}, '
                f'{qos.reliability.name.lower()}, {qos.durability.name.lower()}) while '
                f'{pair.target} has subscribers')
            self._follow_demand(pair)

    def _follow_demand(self, pair):
        """Take the source only while the target has a subscriber: no callback for nobody."""
        wanted = pair.publisher.get_subscription_count() > 0
        if wanted and pair.subscription is None:
            pair.subscription = self.create_subscription(
                pair.extra['msg_type'], pair.source,
                lambda data, p=pair: self._on_message(p, data), pair.extra['qos'], raw=True)
        elif not wanted and pair.subscription is not None:
            pair.extra['idle'] += 1
            if pair.extra['idle'] >= 2:                 # a whole discovery period without one
                self.destroy_subscription(pair.subscription)
                pair.subscription = None
                pair.extra['idle'] = 0
        else:
            pair.extra['idle'] = 0

    # --- the data path --------------------------------------------------------------------

    def _on_message(self, pair, data):
        self.emulation.submit(pair.direction, (pair, data), len(data), pair.source)

    def _publish(self, item):
        pair, data = item[0]
        pair.publisher.publish(data)
        self.emulation.released(item)

    def _publish_failed(self, exc):
        self.get_logger().error(f'publish failed: {exc}', throttle_duration_sec=5.0)

    # --- statistics -----------------------------------------------------------------------

    def stats_statuses(self):
        """Return one DiagnosticStatus per direction (also used by the tests)."""
        return [self.emulation.status(direction, 'network_relay', {'topics': ', '.join(
            f'{p.source}>{p.target}' + (
                '' if p.subscription else ' (no subscriber)' if p.publisher else ' (waiting)')
            for p in self.pairs if p.direction == direction),
            'executor_scheduling': self.executor_schedule.describe()}) for direction in DIRECTIONS]

    def _publish_stats(self):
        msg = diagnostic_array(self, self.stats_statuses())
        self._stats_pub.publish(msg)
        self._diag_pub.publish(msg)

    def on_shutdown(self):
        self._scheduler.stop()


def main(args=None):
    sys.exit(run_node(NetworkRelay, args))


if __name__ == '__main__':
    main()
