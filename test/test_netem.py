"""Statistical and behavioural tests of the impairment model and the release scheduler."""
import dataclasses
import math
import threading
import time

import numpy as np
import pytest

from telesurgery_ros.core.netem import (
    DISTRIBUTIONS, Link, LinkConfig, LinkStats, make_rng, parse_trace)
from telesurgery_ros.core.scheduler import ReleaseScheduler


def run(config, arrivals, size=100, seed=1, start=0.0):
    """Feed arrivals through a fresh link; return the list of fates."""
    link = Link(config, make_rng(seed), start=start)
    return [link.process(t, size) for t in arrivals]


def delays(config, n=20000, period=0.002, seed=1):
    """Delay samples as drawn (netem-style: jitter free to reorder, nothing held back)."""
    arrivals = np.arange(n) * period
    fates = run(dataclasses.replace(config, preserve_order=False), arrivals, seed=seed)
    return np.array([f.releases[0] - t for f, t in zip(fates, arrivals)])


# --- delay -------------------------------------------------------------------------------

@pytest.mark.parametrize('distribution', DISTRIBUTIONS)
@pytest.mark.parametrize('correlation', [0.0, 0.5])
def test_delay_mean_and_deviation_within_confidence_bounds(distribution, correlation):
    mu, sigma = 0.1, 0.01
    d = delays(LinkConfig(delay=mu, jitter=sigma, distribution=distribution,
                          correlation=correlation))
    # uniform is netem's +-jitter; the others have jitter as their standard deviation
    expected_std = sigma / math.sqrt(3.0) if distribution == 'uniform' else sigma
    # AR(1) correlation shrinks the effective sample size by (1 - rho) / (1 + rho)
    n_eff = d.size * (1.0 - correlation) / (1.0 + correlation)
    mean_bound = 5.0 * expected_std / math.sqrt(n_eff)
    print(f'{distribution} rho={correlation}: mean {d.mean() * 1e3:.3f} ms '
          f'(bound {mean_bound * 1e3:.3f}), std {d.std() * 1e3:.3f} ms '
          f'(expected {expected_std * 1e3:.3f})')
    assert abs(d.mean() - mu) < mean_bound
    # the heavy pareto tail (alpha 3: infinite fourth moment) makes its std estimate noisy
    rel = {'uniform': 0.05, 'normal': 0.05, 'pareto': 0.2, 'paretonormal': 0.1}[distribution]
    assert abs(d.std() - expected_std) < rel * expected_std
    assert d.min() >= 0.0


def test_correlation_gives_lag_one_autocorrelation():
    d = delays(LinkConfig(delay=0.1, jitter=0.01, distribution='normal', correlation=0.7))
    x = d - d.mean()
    lag1 = float(np.dot(x[:-1], x[1:]) / np.dot(x, x))
    print(f'lag-1 autocorrelation {lag1:.3f} (configured 0.7)')
    assert abs(lag1 - 0.7) < 0.03
    independent = delays(LinkConfig(delay=0.1, jitter=0.01, distribution='normal'))
    y = independent - independent.mean()
    assert abs(float(np.dot(y[:-1], y[1:]) / np.dot(y, y))) < 0.03


def test_delays_never_negative_and_constant_delay_is_exact():
    d = delays(LinkConfig(delay=0.001, jitter=0.01, distribution='normal'), n=2000)
    assert d.min() == 0.0
    exact = delays(LinkConfig(delay=0.05), n=100)
    assert np.allclose(exact, 0.05, atol=1e-12)


# --- loss ----------------------------------------------------------------------------------

def loss_pattern(config, n, seed=3):
    fates = run(config, np.arange(n) * 0.001, seed=seed)
    return np.array([f.cause == 'loss' for f in fates])


def bursts(lost):
    lengths, current = [], 0
    for flag in lost:
        if flag:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return np.array(lengths)


def test_random_loss_rate():
    lost = loss_pattern(LinkConfig(loss_model='random', loss_p=0.1), 50000)
    bound = 5.0 * math.sqrt(0.1 * 0.9 / lost.size)
    print(f'random loss {lost.mean():.4f} (p 0.1, bound {bound:.4f})')
    assert abs(lost.mean() - 0.1) < bound


def test_gilbert_elliott_long_run_loss_and_mean_burst():
    p, r = 0.02, 0.25
    lost = loss_pattern(LinkConfig(loss_model='gilbert_elliott', loss_p=p, loss_r=r), 200000)
    lengths = bursts(lost)
    expected_loss, expected_burst = p / (p + r), 1.0 / r
    # bursts are geometric (variance (1-r)/r^2); gaps are geometric with mean 1/p
    burst_bound = 5.0 * math.sqrt((1.0 - r) / r ** 2 / lengths.size)
    print(f'GE loss {lost.mean():.4f} (p/(p+r) = {expected_loss:.4f}), mean burst '
          f'{lengths.mean():.3f} (1/r = {expected_burst}, bound {burst_bound:.3f}), '
          f'{lengths.size} bursts')
    assert abs(lengths.mean() - expected_burst) < burst_bound
    assert abs(lost.mean() - expected_loss) < 0.1 * expected_loss


def test_gilbert_elliott_partial_losses_in_both_states():
    p, r, bad, good = 0.05, 0.2, 0.5, 0.01
    lost = loss_pattern(LinkConfig(loss_model='gilbert_elliott', loss_p=p, loss_r=r,
                                   loss_bad=bad, loss_good=good), 200000)
    expected = (p * bad + r * good) / (p + r)
    print(f'GE(h, k) loss {lost.mean():.4f} (expected {expected:.4f})')
    assert abs(lost.mean() - expected) < 0.1 * expected


def test_four_state_markov_loss_matches_stationary_distribution():
    p13, p31, p32, p23, p14 = 0.01, 0.3, 0.2, 0.1, 0.005
    lost = loss_pattern(LinkConfig(loss_model='4state', loss_p13=p13, loss_p31=p31,
                                   loss_p32=p32, loss_p23=p23, loss_p14=p14), 200000)
    # transition matrix over states 1 (gap rx), 2 (burst rx), 3 (burst loss), 4 (gap loss)
    m = np.array([[1 - p13 - p14, 0, p13, p14],
                  [0, 1 - p23, p23, 0],
                  [p31, p32, 1 - p31 - p32, 0],
                  [1, 0, 0, 0]])
    w, v = np.linalg.eig(m.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    expected = pi[2] + pi[3]
    print(f'4-state loss {lost.mean():.4f} (stationary {expected:.4f})')
    assert abs(lost.mean() - expected) < 0.1 * expected


# --- duplication, reordering, order ------------------------------------------------------

def test_duplication_probability_and_copies():
    fates = run(LinkConfig(delay=0.01, jitter=0.002, duplicate=0.1), np.arange(20000) * 0.001)
    dup = np.array([f.duplicated for f in fates])
    assert abs(dup.mean() - 0.1) < 5.0 * math.sqrt(0.09 / dup.size)
    assert all(len(f.releases) == (2 if f.duplicated else 1) for f in fates)


def test_netem_reorder_sends_some_messages_without_delay_respecting_gap():
    gap = 5
    arrivals = np.arange(20000) * 0.001
    fates = run(LinkConfig(delay=0.1, reorder=0.25, reorder_gap=gap), arrivals)
    immediate = np.array([f.reordered for f in fates])
    for f, t in zip(fates, arrivals):
        assert f.releases[0] == pytest.approx(t if f.reordered else t + 0.1)
    idx = np.flatnonzero(immediate)
    # netem: at least gap-1 delayed messages between two reordered ones
    assert np.diff(idx).min() >= gap
    # renewal: gap-1 forced delayed, then geometric(0.25) -> 1 reorder per (gap-1 + 1/0.25)
    expected = 1.0 / (gap - 1 + 1.0 / 0.25)
    print(f'reordered fraction {immediate.mean():.4f} (expected {expected:.4f})')
    assert abs(immediate.mean() - expected) < 0.1 * expected


def test_preserve_order_keeps_delivery_in_order_when_jitter_would_reorder():
    arrivals = np.arange(5000) * 0.002
    config = LinkConfig(delay=0.05, jitter=0.01, distribution='normal', preserve_order=False)
    plain = np.array([f.releases[0] for f in run(config, arrivals)])
    assert np.any(np.diff(plain) < 0), 'jitter 10 ms at 2 ms spacing should reorder'
    kept = np.array([f.releases[0] for f in run(
        LinkConfig(delay=0.05, jitter=0.01, distribution='normal', preserve_order=True),
        arrivals)])
    assert np.all(np.diff(kept) >= 0)
    assert np.all(kept >= plain - 1e-12)      # order is kept by holding, never by hurrying


# --- bandwidth -----------------------------------------------------------------------------

def test_bandwidth_limit_holds_with_drop_tail_queue():
    rate, size, limit = 100000.0, 1000, 50          # 8 ms per message, 8x overloaded
    arrivals = np.arange(4000) * 0.001
    fates = run(LinkConfig(rate=rate, queue_limit=limit), arrivals, size=size)
    releases = np.array([f.releases[0] for f in fates if f.cause is None])
    queue_drops = sum(f.cause == 'queue' for f in fates)
    tx = size * 8.0 / rate
    assert np.all(np.diff(releases) >= tx - 1e-9)
    duration = releases[-1] - arrivals[0]
    achieved = releases.size * size * 8.0 / duration
    print(f'achieved {achieved:.0f} bit/s for a {rate:.0f} bit/s limit, '
          f'{queue_drops} queue drops')
    assert achieved <= rate * 1.001
    assert achieved > rate * 0.95
    # the queue never holds more than its limit: waiting time <= limit * tx
    waits = [f.releases[0] - t for f, t in zip(fates, arrivals) if f.cause is None]
    assert max(waits) <= limit * tx + 1e-9
    assert queue_drops == len(arrivals) - releases.size


def test_bandwidth_below_limit_adds_only_serialisation():
    fates = run(LinkConfig(delay=0.01, rate=1e6), np.arange(100) * 0.01, size=125)
    for f, t in zip(fates, np.arange(100) * 0.01):
        assert f.releases[0] == pytest.approx(t + 0.001 + 0.01)


# --- outages -------------------------------------------------------------------------------

def test_scheduled_outage_window_drops_arrivals_and_messages_in_flight():
    arrivals = np.arange(3000) * 0.001
    fates = run(LinkConfig(delay=0.2, outage_windows=((1.0, 0.5),)), arrivals, start=0.0)
    for f, t in zip(fates, arrivals):
        down = 1.0 <= t < 1.5 or 1.0 <= t + 0.2 < 1.5
        assert (f.cause == 'outage') == down, t


def test_random_outages_down_fraction():
    mean_on, mean_off = 1.0, 0.25
    arrivals = np.arange(100000) * 0.02                       # 2000 s
    fates = run(LinkConfig(outage_mean_on=mean_on, outage_mean_off=mean_off), arrivals)
    down = np.array([f.cause == 'outage' for f in fates])
    expected = mean_off / (mean_on + mean_off)
    print(f'random outages: down {down.mean():.3f} of the time (expected {expected:.3f})')
    assert abs(down.mean() - expected) < 0.15 * expected


def test_blackout_drops_everything():
    link = Link(LinkConfig(), make_rng(0))
    link.blackout = True
    assert all(link.process(t, 10).cause == 'outage' for t in range(10))


# --- trace ---------------------------------------------------------------------------------

def test_trace_replayed_over_time_and_looped():
    trace = parse_trace('# comment\n0,10\n100,20  # ms\n200,30\n')
    assert trace.period == pytest.approx(0.3)
    assert trace.delay_at(0.05) == pytest.approx(0.010)
    assert trace.delay_at(0.15) == pytest.approx(0.020)
    assert trace.delay_at(0.35) == pytest.approx(0.010)       # looped
    fates = run(LinkConfig(trace=trace), [0.0, 0.1, 0.25], start=0.0)
    assert [f.releases[0] for f in fates] == pytest.approx([0.01, 0.12, 0.28])


@pytest.mark.parametrize('text, needle', [
    ('0,10\n0,20\n', 'line 2: time_ms must increase'),
    ('5,10\n', 'line 1: the first time_ms must be 0'),
    ('0,-1\n', 'line 1: delay_ms must be >= 0'),
    ('0,10,3\n', "line 1: expected 'time_ms,delay_ms'"),
    ('0,abc\n', 'line 1: not numbers'),
    ('# nothing\n', 'no samples'),
])
def test_bad_trace_names_the_line(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_trace(text)


def test_sample_trace_parses():
    from telesurgery_ros.resources import data_path
    with open(data_path('config', 'sample_delay_trace.csv')) as handle:
        trace = parse_trace(handle.read())
    assert trace.period == pytest.approx(60.0)
    assert 0.015 < np.median(trace.delays) < 0.040


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_same_input_same_fates():
    config = LinkConfig(delay=0.05, jitter=0.01, distribution='paretonormal', correlation=0.3,
                        loss_model='gilbert_elliott', loss_p=0.05, loss_r=0.3, duplicate=0.05,
                        reorder=0.1, rate=2e5, queue_limit=20, outage_mean_on=0.5,
                        outage_mean_off=0.05)
    rng = np.random.default_rng(7)
    arrivals = np.cumsum(rng.exponential(0.002, 5000))
    sizes = rng.integers(50, 400, arrivals.size)

    def fates(seed):
        link = Link(config, make_rng(seed), start=0.0)
        return [(f.cause, tuple(f.releases)) for f in (
            link.process(t, int(s)) for t, s in zip(arrivals, sizes))]

    first = fates(42)
    assert first == fates(42)
    assert first != fates(43)
    causes = {c for c, _r in first}
    assert {'loss', 'outage', 'queue', None} <= causes


def test_stages_draw_from_independent_streams():
    arrivals = np.arange(5000) * 0.001
    base = LinkConfig(loss_model='random', loss_p=0.1)
    with_dup = LinkConfig(loss_model='random', loss_p=0.1, duplicate=0.3)
    a = [f.cause for f in run(base, arrivals)]
    b = [f.cause for f in run(with_dup, arrivals)]
    assert a == b      # enabling duplication does not change which messages are lost


# --- statistics ----------------------------------------------------------------------------

def test_link_stats_counts_reordering_and_percentiles():
    from telesurgery_ros.core.netem import Fate
    stats = LinkStats(window=100)
    for cause in (None, None, 'loss', 'queue', None):
        stats.arrived(Fate(cause=cause))
    for seq, delay in ((0, 0.010), (2, 0.020), (1, 0.030)):
        stats.released(seq, delay)
    stats.released(0, 0.01, stream='jaw')        # its own stream: not out of order
    snap = stats.snapshot()
    assert snap['messages_in'] == 5 and snap['messages_out'] == 4
    assert snap['dropped_loss'] == 1 and snap['dropped_queue'] == 1
    assert snap['reordered'] == 1
    assert snap['delay_p50_ms'] == pytest.approx(15.0)
    assert snap['loss_ratio'] == pytest.approx(0.4)


# --- scheduler -----------------------------------------------------------------------------

def _release_all(due, max_lead):
    """Submit ``{item: release time}``; return [(delivery time, item)] and the scheduler."""
    got = []
    lock = threading.Lock()

    def deliver(item):
        with lock:
            got.append((time.monotonic(), item))

    sched = ReleaseScheduler(deliver, max_lead=max_lead).start()
    try:
        for i, t in due.items():
            sched.submit(t, i, key='forward')
        deadline = time.monotonic() + 10.0
        while len(got) < len(due) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sched.stop()
    return got, sched


@pytest.mark.parametrize('max_lead', [0.0, 2e-4])
def test_scheduler_releases_in_time_order_never_earlier_than_its_lead(max_lead):
    now = time.monotonic()
    due = {i: now + 0.05 + 0.002 * ((i * 7) % 20) for i in range(40)}
    got, sched = _release_all(due, max_lead)
    assert len(got) == 40
    late = [at - due[i] for at, i in got]
    assert 0.0 <= sched.lead <= max_lead
    assert min(late) >= -max_lead
    assert [i for _at, i in got] == sorted(due, key=lambda i: (due[i], i))
    print(f'scheduler lateness (max_lead {max_lead * 1e3:g} ms): median '
          f'{np.median(late) * 1e3:.3f} ms, max {max(late) * 1e3:.3f} ms, lead '
          f'{sched.lead * 1e3:.3f} ms')
    assert sched.pending['forward'] == 0


def test_scheduler_learns_its_wake_up_latency_and_releases_on_time_on_average():
    """The lead follows the median lateness of the timed wake-ups, so the median moves in."""
    now = time.monotonic() + 0.05
    due = {i: now + 0.002 * i for i in range(400)}          # 500 Hz for 0.8 s
    fixed, _ = _release_all(due, 0.0)
    now = time.monotonic() + 0.05
    due2 = {i: now + 0.002 * i for i in range(400)}
    learned, sched = _release_all(due2, 2e-4)
    late_fixed = np.array([at - due[i] for at, i in fixed])
    late = np.array([at - due2[i] for at, i in learned])
    print(f'median lateness: {np.median(late_fixed) * 1e6:.0f} us without a lead, '
          f'{np.median(late) * 1e6:.0f} us with the learned lead of '
          f'{sched.lead * 1e6:.0f} us; earliest {late.min() * 1e6:.0f} us')
    assert late_fixed.min() >= 0.0
    assert late.min() >= -2e-4
    assert 0.0 < sched.lead <= 2e-4          # a wake-up is never exactly on time
    assert [i for _at, i in learned] == sorted(due2)


def test_scheduler_keeps_the_order_of_a_fifo_link_across_both_release_paths():
    """
    Release times that never decrease (preserve_order) leave in submission order.

    Submissions from a 'callback' thread mix items already due (the immediate path) with
    items a fraction of a millisecond ahead (the release thread), in bursts like a stalled
    timer catching up, on two keys.
    """
    got = {'forward': [], 'backward': []}
    sched = ReleaseScheduler(lambda item: got[item[0]].append(item[1])).start()
    rng = np.random.default_rng(3)
    try:
        last = {'forward': 0.0, 'backward': 0.0}
        for i in range(4000):
            key = 'forward' if rng.random() < 0.6 else 'backward'
            now = time.monotonic()
            release = max(last[key], now + rng.choice([-0.001, 0.0, 0.0002, 0.0008]))
            last[key] = release
            sched.submit(release, (key, i), key=key)
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0.0, 0.0005))
        deadline = time.monotonic() + 10.0
        while sum(map(len, got.values())) < 4000 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sched.stop()
    for key, items in got.items():
        assert items == sorted(items), f'{key}: delivered out of order'
    assert sum(map(len, got.values())) == 4000


def test_scheduler_due_item_goes_out_at_once_and_discard_removes_waiting():
    got = []
    sched = ReleaseScheduler(got.append).start()
    try:
        assert sched.submit(time.monotonic() - 1.0, 'now') is True
        assert got == ['now']
        sched.submit(time.monotonic() + 30.0, 'later-f', key='forward')
        sched.submit(time.monotonic() + 30.0, 'later-b', key='backward')
        assert sched.submit(time.monotonic(), 'behind', key='forward') in (True, False)
        dropped = sched.discard(lambda key, item: key == 'forward' and item == 'later-f')
        assert dropped == [('forward', 'later-f')]
        assert sched.pending['backward'] == 1
    finally:
        sched.stop()
