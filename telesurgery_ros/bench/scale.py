"""
``scale``: 1, 2 and 4 arms in one stack, each a whole stack in its own namespace.

Arm ``k`` runs the four nodes in ``/armk`` (every topic of the nodes is relative, so they all
move into the namespace; ``/diagnostics`` is absolute and is remapped to ``/armk/diagnostics``
so that a watchdog only sees its own slave). Relay profile ``none``. Measured: CPU of all node
processes over the window, the console-sample -> slave-input latency of every arm
(``/armk/psm1/servo_cp`` as delivered by the relay, receive - stamp; it flows whatever the
safety state), and each arm's loop rate and overrun fraction from its slave's own
``/armk/diagnostics``. The latency is measured by the bench's sink, a process with normal
scheduling; the slave's own account of it (``command_latency_p99_ms`` of its reports, arrival
in its callback - stamp) is reported beside it, as the worst report of any arm. Growth per
arm is relative to the 1-arm run. Targets (issue 13): with 2 arms on 2 cores, latency p99 <= 5
ms and every loop at >= 990 Hz; moonshot: 4 arms, p99 <= 10 ms.
"""
import numpy as np

from telesurgery_ros.bench.control_loop import loop_figures
from telesurgery_ros.bench.latency import full_stack
from telesurgery_ros.bench.measure import measure
from telesurgery_ros.bench.stack import BenchError, require_nodes
from telesurgery_ros.bench.stats import figure, summarize
from telesurgery_ros.core.contract import arm_topics

ARMS = (1, 2, 4)
CONSOLE = {'trajectory.shape': 'suture'}
NODES = ('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
TARGET_P99_MS = {2: (5.0, 'target'), 4: (10.0, 'moonshot')}
TARGET_LOOP_HZ = 990.0


def namespace(k):
    return f'arm{k}'


def diagnostics_topic(k):
    return f'/{namespace(k)}/diagnostics'


def arm_loops(m, n):
    """Per arm: the loop figures of its slave over the window (None where none arrived)."""
    out = {}
    for k in range(1, n + 1):
        statuses = [s for s in m.recording.statuses if s['topic'] == diagnostics_topic(k)]
        out[k] = loop_figures(statuses, m.window.span)
    return out


def run(ctx, arms=ARMS):
    require_nodes(*NODES)
    seconds = ctx.seconds(10.0, 2.0)
    result = ctx.new_result('scale', {'arms': list(arms), 'window_s': seconds,
                                      'console': CONSOLE, 'profile': 'none'})
    rows, arm_rows = [], []
    runs = {}
    for n in arms:
        ctx.progress(f'{n} arm(s) for {seconds:g} s')
        topics = [f'/{namespace(k)}/{arm_topics()["servo_cp"]}' for k in range(1, n + 1)]

        def start(stack, n=n):
            for k in range(1, n + 1):
                ns = namespace(k)
                full_stack(stack, console_params=CONSOLE, namespace=ns,
                           remaps={'/diagnostics': diagnostics_topic(k)})
        try:
            m = measure(ctx, f'scale-{n}', start, topics, seconds, warmup=2.0,
                        ready_timeout=30.0 + 15.0 * n, fail_on_estop=False,
                        sink_options={'status_topics': [diagnostics_topic(k)
                                                        for k in range(1, n + 1)]})
        except BenchError as exc:
            result['skipped'].append(f'{n} arm(s): {exc}'.splitlines()[0])
            ctx.progress(f'  {n} arm(s) FAILED: {exc}')
            continue
        lat = np.concatenate([m.latency(t) for t in topics])
        s = summarize(lat, 1e3)
        node_cpu = {name: cpu for name, cpu in m.cpu.items() if name != 'sink'}
        total = sum(v or 0.0 for v in node_cpu.values())
        per_node = {kind: sum(v or 0.0 for name, v in node_cpu.items()
                              if name.endswith('/' + kind)) / n for kind in NODES}
        loops = arm_loops(m, n)
        rates = [d['rate_hz'] for d in loops.values() if d and d['rate_hz'] is not None]
        slowest = min(rates) if len(rates) == n else None
        at_slave = [d['command_latency_p99_ms_worst'] for d in loops.values()
                    if d and d['command_latency_p99_ms_worst'] is not None]
        at_slave = max(at_slave) if len(at_slave) == n else None
        runs[n] = {'latency_ms': s, 'cpu_total': total, 'cpu_per_arm': total / n,
                   'cpu_per_node_kind_per_arm': per_node, 'cpu': m.cpu,
                   'loops': {str(k): v for k, v in loops.items()}, 'slowest_loop_hz': slowest,
                   'latency_p99_at_slave_worst_ms': at_slave}
        rows.append([n, total, total / n, *(per_node[k] for k in NODES), s['p50'], s['p99'],
                     at_slave, slowest])
        for k, d in loops.items():
            arm_rows.append([n, namespace(k), None if d is None else d['rate_hz'],
                             None if d is None else d['overrun_fraction'],
                             None if d is None else d['jitter_p99_ms_worst'],
                             summarize(m.latency(topics[k - 1]), 1e3)['p99'],
                             None if d is None else d['command_latency_p99_ms_worst']])
        ctx.progress(f'  CPU {total:.0f} % of a core ({total / n:.0f} % per arm), '
                     f'latency p50 {s["p50"]:.2f} ms p99 {s["p99"]:.2f} ms (at the slave, worst '
                     'report: ' + ('-' if at_slave is None else f'{at_slave:.2f} ms')
                     + '), slowest loop '
                     + ('-' if slowest is None else f'{slowest:.0f} Hz'))
    if not runs:
        raise BenchError('no arm count could be measured')
    first = min(runs)
    one = runs[first]
    for n in sorted(runs)[1:]:
        r = runs[n]
        result['figures'].append(figure(
            f'{n} arms: CPU per arm', r['cpu_per_arm'], '% core', one['cpu_per_arm'],
            f'{first} arm'))
        result['figures'].append(figure(
            f'{n} arms: latency p50', r['latency_ms']['p50'], 'ms',
            one['latency_ms']['p50'], f'{first} arm'))
        limit, kind = TARGET_P99_MS.get(n, (None, None))
        p99 = r['latency_ms']['p99']
        result['figures'].append(figure(
            f'{n} arms: latency p99', p99, 'ms', one['latency_ms']['p99'], f'{first} arm',
            None if limit is None else
            f'<= {limit:g} ms' + (' (moonshot)' if kind == 'moonshot' else ''),
            None if limit is None or p99 is None else p99 <= limit))
        result['figures'].append(figure(
            f'{n} arms: latency p99 at the slave (worst report)',
            r['latency_p99_at_slave_worst_ms'], 'ms', one['latency_p99_at_slave_worst_ms'],
            f'{first} arm'))
        slowest = r['slowest_loop_hz']
        result['figures'].append(figure(
            f'{n} arms: slowest loop rate', slowest, 'Hz', one['slowest_loop_hz'],
            f'{first} arm', f'>= {TARGET_LOOP_HZ:g} Hz' if n == 2 else None,
            (None if slowest is None else slowest >= TARGET_LOOP_HZ) if n == 2 else None))
    cores = result['machine'].get('usable_cores') or 1
    busiest = max(runs.values(), key=lambda r: r['cpu_total'])
    if busiest['cpu_total'] > 75.0 * cores:
        result['notes'].append(
            f"the nodes used {busiest['cpu_total']:.0f} % of one core with {cores} cores "
            'available: the machine is saturated, so CPU per arm falls because every node '
            'gets less time (the loops run late), not because a node got cheaper')
    result['tables'].append({
        'title': 'CPU (% of one core) and console -> slave input latency (ms) per number of '
                 'arms',
        'columns': ['arms', 'CPU total', 'CPU per arm', *(f'{k} per arm' for k in NODES),
                    'latency p50', 'latency p99', 'latency p99 at the slave (worst report)',
                    'slowest loop Hz'],
        'rows': rows})
    result['tables'].append({
        'title': "every arm's slave loop (its /armN/diagnostics) and latency p99 (ms)",
        'columns': ['arms', 'arm', 'loop rate Hz', 'overrun fraction', 'jitter p99 worst ms',
                    'latency p99', 'latency p99 at the slave (worst report)'],
        'rows': arm_rows})
    result['details'] = {'runs': {str(k): v for k, v in runs.items()}}
    return result
