"""
A seeded, per-direction network impairment model in the spirit of Linux netem.

One :class:`Link` models one direction of the link between the two sites. For every message
that enters it, :meth:`Link.process` decides its fate at once: dropped (and why), or delivered
at one or more absolute release times (more than one when duplicated). Nothing here sleeps or
reads a clock: the caller passes the arrival time, so the model is exact and testable, and the
same seed with the same arrivals gives exactly the same fates.

Order of the stages, per message (netem's order, with the bottleneck before the delay line):

1. outage at arrival (scheduled windows, random on/off outages, or a blackout) -> ``outage``;
2. loss model (``random``, ``gilbert_elliott``, ``4state``) -> ``loss``;
3. bandwidth limit: a FIFO bottleneck of ``rate`` bit/s serialising each message's size, with
   a drop-tail queue of ``queue_limit`` messages -> ``queue``;
4. duplication (the copy gets its own delay sample);
5. delay: the base delay (constant or replayed from a trace) plus jitter drawn from the chosen
   distribution, correlated between consecutive messages; netem-style reordering sends some
   messages with no delay; ``preserve_order`` (the default: a fibre or cellular path is a
   FIFO, its jitter is queueing delay) holds a message until the previous delayed one left,
   so jitter never reorders (an explicit ``reorder`` still overtakes, as asked); with
   ``preserve_order`` false the jitter reorders, as netem does;
6. a copy whose release time falls inside an outage is dropped too (``outage``).

Jitter: ``uniform`` is netem's default, uniform in ``delay +- jitter``; for ``normal``,
``pareto`` (alpha 3, shifted to zero mean) and ``paretonormal`` (netem's mix: 3/4 normal,
1/4 pareto, rescaled) ``jitter`` is the standard deviation. Delays are clipped at zero.
Correlation is an AR(1) process on the standard-normal driver of the draw, mapped through
the normal CDF where the distribution needs a uniform: unlike netem's ``(1-rho)*new +
rho*last`` blend, it keeps the configured mean and deviation whatever the correlation.

Each random stage draws from its own generator spawned from the injected one, so changing
one stage (say the duplication probability) does not shift the fates drawn by the others.
"""
import bisect
from collections import deque
from dataclasses import dataclass, field
import math
import threading

import numpy as np

DISTRIBUTIONS = ('uniform', 'normal', 'pareto', 'paretonormal')
LOSS_MODELS = ('none', 'random', 'gilbert_elliott', '4state')
DROP_CAUSES = ('loss', 'outage', 'queue')

_PARETO_ALPHA = 3.0
_PARETO_MEAN = _PARETO_ALPHA / (_PARETO_ALPHA - 1.0)                 # for x_m = 1
_PARETO_STD = math.sqrt(_PARETO_ALPHA / (_PARETO_ALPHA - 2.0)) / (_PARETO_ALPHA - 1.0)
_PARETONORMAL_STD = math.sqrt(0.75 ** 2 + 0.25 ** 2)


@dataclass(frozen=True)
class DelayTrace:
    """
    One-way delays replayed over time: ``times`` (s, from 0, increasing), ``delays`` (s).

    The delay at time ``t`` is the last sample at or before ``t``; the trace loops with the
    period ``times[-1] + (times[-1] - times[-2])`` (the last sample lasts one more step).
    """

    times: tuple
    delays: tuple
    source: str = ''

    @property
    def period(self):
        if len(self.times) < 2:
            return math.inf
        return self.times[-1] + (self.times[-1] - self.times[-2])

    def delay_at(self, t):
        period = self.period
        if math.isfinite(period):
            t = t % period
        index = bisect.bisect_right(self.times, t) - 1
        return self.delays[max(index, 0)]


def parse_trace(text, source='trace'):
    """
    Parse a delay trace: one ``time_ms,delay_ms`` pair a line, ``#`` starts a comment.

    Times start at 0 and increase strictly; delays are >= 0. Raise ValueError naming the
    line for anything else.
    """
    times, delays = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.replace(';', ',').split(',')]
        where = f'{source} line {number}'
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'time_ms,delay_ms', got {line!r}")
        try:
            t_ms, d_ms = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f'{where}: not numbers: {line!r}') from None
        if not (math.isfinite(t_ms) and math.isfinite(d_ms)):
            raise ValueError(f'{where}: values must be finite, got {line!r}')
        if d_ms < 0.0:
            raise ValueError(f'{where}: delay_ms must be >= 0, got {d_ms}')
        if not times and t_ms != 0.0:
            raise ValueError(f'{where}: the first time_ms must be 0, got {t_ms}')
        if times and t_ms * 1e-3 <= times[-1]:
            raise ValueError(f'{where}: time_ms must increase, got {t_ms} after '
                             f'{times[-1] * 1e3:g}')
        times.append(t_ms * 1e-3)
        delays.append(d_ms * 1e-3)
    if not times:
        raise ValueError(f'{source}: no samples')
    return DelayTrace(tuple(times), tuple(delays), source)


@dataclass(frozen=True)
class LinkConfig:
    """The impairments of one direction (seconds, bit/s, probabilities in 0..1)."""

    delay: float = 0.0                 # s, constant one-way delay (ignored with a trace)
    jitter: float = 0.0                # s, uniform: half-width; others: standard deviation
    distribution: str = 'uniform'      # one of DISTRIBUTIONS
    correlation: float = 0.0           # 0..1, between consecutive jitter draws
    loss_model: str = 'none'           # one of LOSS_MODELS
    loss_p: float = 0.0                # random: loss probability; GE: P(good -> bad)
    loss_r: float = 1.0                # GE: P(bad -> good); mean burst = 1/r
    loss_bad: float = 1.0              # GE: loss probability in the bad state (netem 1-h)
    loss_good: float = 0.0             # GE: loss probability in the good state (netem 1-k)
    loss_p13: float = 0.0              # 4state: gap -> burst loss
    loss_p31: float = 1.0              # 4state: burst loss -> gap
    loss_p32: float = 0.0              # 4state: burst loss -> burst reception
    loss_p23: float = 0.0              # 4state: burst reception -> burst loss
    loss_p14: float = 0.0              # 4state: gap -> isolated loss
    duplicate: float = 0.0             # probability of a second copy
    reorder: float = 0.0               # probability of sending a message with no delay
    reorder_gap: int = 1               # netem gap: only after gap-1 delayed messages
    preserve_order: bool = True        # never release before the previous message (FIFO)
    rate: float = 0.0                  # bit/s of the bottleneck, 0 = unlimited
    queue_limit: int = 1000            # messages waiting for the bottleneck (drop-tail)
    outage_windows: tuple = ()         # ((start, duration), ...) s from the link's start
    #                                    (the relay: when the profile was last applied)
    outage_mean_on: float = 0.0        # s, mean up time of random outages (0 = none)
    outage_mean_off: float = 0.0       # s, mean down time of random outages
    trace: DelayTrace = field(default=None, compare=False)


@dataclass
class Fate:
    """What happens to one message: a drop cause, or its deliveries."""

    cause: str = None                  # one of DROP_CAUSES, or None when delivered
    releases: list = field(default_factory=list)    # absolute release times, s
    duplicated: bool = False
    reordered: bool = False            # sent ahead of the delay line (netem reorder)


class DelaySampler:
    """Jitter draws with AR(1) correlation on a standard-normal driver."""

    def __init__(self, config, rng):
        self.config = config
        self.rng = rng
        self._z = None

    def _driver(self):
        eps = self.rng.standard_normal()
        rho = self.config.correlation
        if self._z is None or rho == 0.0:
            self._z = eps
        else:
            self._z = rho * self._z + math.sqrt(1.0 - rho * rho) * eps
        return self._z

    def jitter(self):
        """Return one jitter sample in seconds (zero mean)."""
        cfg = self.config
        if cfg.jitter == 0.0:
            return 0.0
        z = self._driver()
        if cfg.distribution == 'normal':
            unit = z
        elif cfg.distribution == 'uniform':
            unit = 2.0 * _phi(z) - 1.0
        elif cfg.distribution == 'pareto':
            unit = _pareto_unit(_phi(z))
        else:   # paretonormal
            unit = (0.75 * z + 0.25 * _pareto_unit(self.rng.random())) / _PARETONORMAL_STD
        return cfg.jitter * unit


def _phi(z):
    return min(max(0.5 * (1.0 + math.erf(z / math.sqrt(2.0))), 0.0), 1.0 - 1e-16)


def _pareto_unit(u):
    """Pareto(alpha 3) from a uniform, scaled to zero mean and unit deviation."""
    x = (1.0 - u) ** (-1.0 / _PARETO_ALPHA)
    return (x - _PARETO_MEAN) / _PARETO_STD


class LossModel:
    """Bernoulli, Gilbert-Elliott and netem's 4-state Markov loss, as netem computes them."""

    GOOD, BAD = 1, 2
    GAP_RX, BURST_RX, BURST_LOSS, GAP_LOSS = 1, 2, 3, 4

    def __init__(self, config, rng):
        self.config = config
        self.rng = rng
        self.state = 1

    def lost(self):
        cfg = self.config
        model = cfg.loss_model
        if model == 'none':
            return False
        if model == 'random':
            return cfg.loss_p > 0.0 and self.rng.random() < cfg.loss_p
        if model == 'gilbert_elliott':
            # netem loss_gilb_ell(): move the chain, judge with the state it left.
            move, judge = self.rng.random(), self.rng.random()
            if self.state == self.GOOD:
                if move < cfg.loss_p:
                    self.state = self.BAD
                return judge < cfg.loss_good
            if move < cfg.loss_r:
                self.state = self.GOOD
            return judge < cfg.loss_bad
        return self._four_state()

    def _four_state(self):
        # netem loss_4state(): 1 reception in a gap, 2 reception in a burst,
        # 3 loss in a burst, 4 isolated loss in a gap.
        cfg = self.config
        u = self.rng.random()
        if self.state == self.GAP_RX:
            if u < cfg.loss_p14:
                self.state = self.GAP_LOSS
                return True
            if u < cfg.loss_p14 + cfg.loss_p13:
                self.state = self.BURST_LOSS
                return True
            return False
        if self.state == self.BURST_RX:
            if u < cfg.loss_p23:
                self.state = self.BURST_LOSS
                return True
            return False
        if self.state == self.BURST_LOSS:
            if u < cfg.loss_p32:
                self.state = self.BURST_RX
                return False
            if u < cfg.loss_p32 + cfg.loss_p31:
                self.state = self.GAP_RX
                return False
            return True
        self.state = self.GAP_RX     # GAP_LOSS: the next one goes through
        return False


class OutageSchedule:
    """Scheduled windows plus random on/off outages (exponential up and down times)."""

    def __init__(self, config, rng, start):
        self.start = start
        self.windows = [(start + s, start + s + d) for s, d in config.outage_windows]
        self.rng = rng
        self.mean_on = config.outage_mean_on
        self.mean_off = config.outage_mean_off
        self._random = deque()           # generated (begin, end) random outages
        self._horizon = start            # random outages are generated up to here

    def _extend(self, t):
        if self.mean_on <= 0.0 or self.mean_off <= 0.0:
            return
        while self._horizon <= t:
            begin = self._horizon + self.rng.exponential(self.mean_on)
            end = begin + self.rng.exponential(self.mean_off)
            self._random.append((begin, end))
            self._horizon = end

    def forget_before(self, t):
        """Drop random outages that ended before ``t`` (arrivals never go back in time)."""
        while self._random and self._random[0][1] < t:
            self._random.popleft()

    def active(self, t):
        """Return whether the link is down at absolute time ``t``."""
        for begin, end in self.windows:
            if begin <= t < end:
                return True
        self._extend(t)
        for begin, end in self._random:
            if begin > t:
                break
            if t < end:
                return True
        return False


class Link:
    """One direction of the emulated link; see the module docstring for the stages."""

    def __init__(self, config, rng, start=0.0):
        """Build the link; ``rng`` is a numpy Generator, ``start`` the time outages count from."""
        self.config = config
        streams = rng.spawn(5)
        self._delay = DelaySampler(config, streams[0])
        self._loss = LossModel(config, streams[1])
        self._dup_rng = streams[2]
        self._reorder_rng = streams[3]
        self.outages = OutageSchedule(config, streams[4], start)
        self.start = start
        self.blackout = False
        self._link_free = -math.inf      # when the bottleneck finishes its current message
        self._backlog = deque()          # departure times of messages in the bottleneck
        self._last_release = -math.inf
        self._reorder_counter = 0

    def in_outage(self, t):
        return self.blackout or self.outages.active(t)

    def queue_depth(self, now):
        """Messages waiting for or in the bottleneck at ``now``."""
        while self._backlog and self._backlog[0] <= now:
            self._backlog.popleft()
        return len(self._backlog)

    def base_delay(self, t):
        cfg = self.config
        return cfg.trace.delay_at(t - self.start) if cfg.trace is not None else cfg.delay

    def process(self, now, size):
        """Decide the fate of a message of ``size`` bytes arriving at ``now`` (s)."""
        cfg = self.config
        self.outages.forget_before(now)
        if self.in_outage(now):
            return Fate(cause='outage')
        if self._loss.lost():
            return Fate(cause='loss')
        depart = now
        if cfg.rate > 0.0:
            if self.queue_depth(now) >= cfg.queue_limit:
                return Fate(cause='queue')
            depart = max(now, self._link_free) + size * 8.0 / cfg.rate
            self._link_free = depart
            self._backlog.append(depart)
        copies = 2 if cfg.duplicate > 0.0 and self._dup_rng.random() < cfg.duplicate else 1
        fate = Fate(duplicated=copies == 2)
        for _copy in range(copies):
            release = self._release_time(depart, fate)
            if self.in_outage(release):
                continue
            fate.releases.append(release)
        if not fate.releases:
            fate.cause = 'outage'
        return fate

    def _release_time(self, depart, fate):
        cfg = self.config
        if cfg.reorder > 0.0:
            if (self._reorder_counter >= cfg.reorder_gap - 1
                    and self._reorder_rng.random() < cfg.reorder):
                # netem: this one skips the delay line and overtakes the ones in it.
                self._reorder_counter = 0
                fate.reordered = True
                return depart
            self._reorder_counter += 1
        delay = max(self.base_delay(depart) + self._delay.jitter(), 0.0)
        release = depart + delay
        if cfg.preserve_order:
            release = max(release, self._last_release)
            self._last_release = release
        return release


def make_rng(seed, stream=0):
    """Return the numpy Generator of one direction: ``stream`` 0 forward, 1 backward."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))


class LinkStats:
    """
    Counters and recent achieved delays of one direction (thread-safe, cheap to update).

    ``window`` bounds the recent history used for the delay percentiles and the recent loss
    ratio. ``reordered`` counts the messages released after a later one of the same stream
    (topic): what a receiver sees out of order.
    """

    COUNTERS = ('messages_in', 'messages_out', 'dropped_loss', 'dropped_outage',
                'dropped_queue', 'duplicated', 'reordered')

    def __init__(self, window=500, lock=None):
        self._lock = lock or threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self._delays = deque(maxlen=window)
        self._recent = deque(maxlen=window)       # 1 dropped, 0 accepted, per input
        self._max_seq = {}                         # stream -> highest input index released

    def arrived(self, fate):
        with self._lock:
            self.counts['messages_in'] += 1
            if fate.cause is not None:
                self.counts['dropped_' + fate.cause] += 1
            if fate.duplicated:
                self.counts['duplicated'] += 1
            self._recent.append(1 if fate.cause is not None else 0)

    def dropped_in_flight(self, count, cause='outage'):
        with self._lock:
            self.counts['dropped_' + cause] += count

    def released(self, seq, delay, stream=None):
        """Count one delivered message: ``seq`` its input index in ``stream``, ``delay`` (s)."""
        with self._lock:
            self.counts['messages_out'] += 1
            if seq < self._max_seq.get(stream, -1):
                self.counts['reordered'] += 1
            else:
                self._max_seq[stream] = seq
            self._delays.append(delay)

    def snapshot(self):
        """Return counters plus delay_p50_ms, delay_p99_ms and loss_ratio (recent)."""
        with self._lock:
            out = dict(self.counts)
            delays = np.fromiter(self._delays, float, len(self._delays))
            recent = list(self._recent)
        if delays.size:
            p50, p99 = np.percentile(delays, [50.0, 99.0]) * 1e3
            out['delay_p50_ms'], out['delay_p99_ms'] = float(p50), float(p99)
        else:
            out['delay_p50_ms'] = out['delay_p99_ms'] = float('nan')
        out['loss_ratio'] = sum(recent) / len(recent) if recent else 0.0
        return out
