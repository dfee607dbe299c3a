"""
The emulated long-distance network as a part of a node: shared by network_relay and site_link.

One :class:`Emulation` holds, for the two directions (``forward``: console -> patient,
``backward``: patient -> console), the :class:`~telesurgery_ros.core.netem.Link` built from
the named profile and its overrides (:mod:`telesurgery_ros.core.profiles`), the statistics
(:class:`~telesurgery_ros.core.netem.LinkStats`) and the messages in flight in a
:class:`~telesurgery_ros.core.scheduler.ReleaseScheduler` that the node creates and owns.
Its parameters (:data:`PARAMETERS`), the blackout and the ``network/stats`` statuses are
the same wherever it runs, so the relay and the patient-side link emulate, count and report
in one way.
"""
import itertools
import math
import time

from rclpy.parameter import Parameter

from telesurgery_ros.core import profiles as netprofiles
from telesurgery_ros.core.netem import Link, LinkStats, make_rng
from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.rosutil import diagnostic_status

DIRECTIONS = netprofiles.DIRECTIONS

PARAMETERS = (
    Param('profile', 'rome_beijing_2024', 'named network profile (profiles_file)'),
    Param('overrides', '', "per-field overrides of the profile, '<direction>.<field>=<value>' "
          "separated by ';', direction forward, backward or both, e.g. "
          "'forward.delay=0.05; both.loss.model=random; both.loss.p=0.01'"),
    Param('seed', 0, 'seed of the random impairments (same seed + same input = same fates)',
          low=0, high=2 ** 31 - 1),
    Param('blackout', False, 'cut both directions now; messages in flight are dropped'),
    Param('stats_rate', 2.0, 'rate of network/stats and /diagnostics', 'Hz', low=0.1,
          high=50.0),
    Param('stats_window', 500, 'recent messages per direction behind the delay percentiles '
          'and loss_ratio', 'messages', low=10, high=100000, read_only=True),
    Param('profiles_file', '', 'YAML file of named profiles; empty = the package '
          'config/network_profiles.yaml', read_only=True),
)


class Emulation:
    """Both directions of the emulated network of one node (``node`` logs and owns it)."""

    def __init__(self, node):
        self.node = node
        self.scheduler = None            # the node's ReleaseScheduler, set once it exists
        self.stats = {}
        self.links = {}
        self.resolved = None
        self._seq = {}                   # (direction, stream) -> input index counter
        self._profiles_cache = {}

    # --- configuration ------------------------------------------------------------------

    def _profiles(self, path):
        if path not in self._profiles_cache:
            self._profiles_cache[path] = netprofiles.load_profiles(
                path or netprofiles.default_profiles_path())
        return self._profiles_cache[path]

    def check(self, cfg):
        """Return the problems of the profile, its overrides and the profiles file."""
        try:
            netprofiles.resolve(self._profiles(cfg.profiles_file), cfg.profile, cfg.overrides)
        except ConfigError as exc:
            return exc.problems
        except FileNotFoundError as exc:
            return [f"parameter 'profiles_file': {exc}"]
        return []

    def start(self, cfg):
        """Create the statistics (``stats_window``) and apply the profile."""
        self.stats = {d: LinkStats(cfg.stats_window) for d in DIRECTIONS}
        self.apply(cfg, reason='start')

    def apply(self, cfg, reason):
        """Build both directions from the profile (their clocks start now) and log them."""
        resolved = netprofiles.resolve(self._profiles(cfg.profiles_file), cfg.profile,
                                       cfg.overrides)
        now = time.monotonic()
        self.resolved = resolved
        self.links = {d: Link(resolved.link(d), make_rng(cfg.seed, i), start=now)
                      for i, d in enumerate(DIRECTIONS)}
        for link in self.links.values():
            link.blackout = cfg.blackout
        extra = f' (overrides: {cfg.overrides})' if cfg.overrides.strip() else ''
        self.node.get_logger().info(
            f"{reason}: profile '{resolved.name}'{extra}, seed {cfg.seed}: "
            + '; '.join(f'{d}: {netprofiles.summary(resolved.link(d))}' for d in DIRECTIONS))

    def on_change(self, cfg, names):
        """Apply accepted parameter changes that concern the emulation."""
        if {'profile', 'overrides', 'seed'} & set(names):
            self.apply(cfg, reason='network changed')
        if 'blackout' in names:
            self.set_blackout(cfg.blackout)

    def discard_in_flight(self, cause='outage'):
        """Drop every message waiting for its release time; count them; return how many."""
        dropped = self.scheduler.discard(lambda key, item: True)
        for direction in DIRECTIONS:
            count = sum(1 for key, _item in dropped if key == direction)
            if count:
                self.stats[direction].dropped_in_flight(count, cause)
        return len(dropped)

    def set_blackout(self, on):
        for link in self.links.values():
            link.blackout = on
        if on:
            dropped = self.discard_in_flight('outage')
            self.node.get_logger().warning(
                f'blackout ON: both directions cut, {dropped} message(s) in flight dropped')
        else:
            self.node.get_logger().info('blackout OFF: link restored')

    def on_blackout_service(self, request, response):
        """``network/blackout`` (std_srvs/SetBool): set the ``blackout`` parameter."""
        result = self.node.set_parameters([Parameter('blackout', Parameter.Type.BOOL,
                                                     bool(request.data))])[0]
        response.success = result.successful
        response.message = ('blackout on' if request.data else 'blackout off') \
            if result.successful else result.reason
        return response

    # --- the data path --------------------------------------------------------------------

    def submit(self, direction, payload, size, stream):
        """
        One message of ``stream`` (its topic) enters ``direction``: decide its fate, schedule.

        The node's scheduler delivers ``(payload, arrival, seq, direction, stream)``; the node
        sends the payload and calls :meth:`released` with that item. ``seq`` numbers the
        messages of one stream, so ``reordered`` counts what a receiver of that topic sees
        out of order.
        """
        now = time.monotonic()
        fate = self.links[direction].process(now, size)
        self.stats[direction].arrived(fate)
        counter = self._seq.get((direction, stream))
        if counter is None:
            counter = self._seq[(direction, stream)] = itertools.count()
        seq = next(counter)
        for release in fate.releases:
            self.scheduler.submit(release, (payload, now, seq, direction, stream),
                                  key=direction)

    def released(self, item):
        """Count a delivered message (an item the scheduler handed over)."""
        _payload, arrival, seq, direction, stream = item
        self.stats[direction].released(seq, time.monotonic() - arrival, stream)

    # --- statistics -----------------------------------------------------------------------

    def status(self, direction, source, extra=None):
        """Return the DiagnosticStatus ``'<source>: <direction>'`` of one direction."""
        now = time.monotonic()
        link = self.links[direction]
        snap = self.stats[direction].snapshot()
        outage = link.in_outage(now)
        values = dict(snap)
        values['queue_depth'] = self.scheduler.pending.get(direction, 0)
        values['bottleneck_depth'] = link.queue_depth(now)
        values['configured_delay_ms'] = link.base_delay(now) * 1e3
        values['profile'] = self.resolved.name
        values['preserve_order'] = link.config.preserve_order
        values['scheduling'] = self.scheduler.schedule.describe()
        # How early the release thread wakes, its measured median wake-up latency (ms).
        values['release_lead_ms'] = self.scheduler.lead * 1e3
        values['blackout'] = link.blackout
        values['outage'] = outage
        values.update(extra or {})
        if link.blackout:
            level, message = 'WARN', 'blackout'
        elif outage:
            level, message = 'WARN', 'outage'
        else:
            p50 = snap['delay_p50_ms']
            level = 'OK'
            message = (f'{self.resolved.name}: p50 {p50:.1f} ms, loss '
                       f"{100.0 * snap['loss_ratio']:.1f} %"
                       if math.isfinite(p50) else f'{self.resolved.name}: no traffic')
        return diagnostic_status(f'{source}: {direction}', source, level, message, values)
