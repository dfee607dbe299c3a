"""
``latency``: what the stack adds on top of the network.

Three paths, one-way, measured with stamps on the shared system clock:

1. bare hop (the baseline): a bench source process publishes PoseStamped, a sink process
   receives it: one rclpy/DDS hop between two processes;
2. relay path: source -> ``console/psm1/servo_cp`` -> network_relay (profile ``none``, zero
   impairment) -> ``psm1/servo_cp`` -> sink: two hops plus the relay's work;
3. end to end: the whole stack (master_console, network_relay ``none``, slave_controller,
   safety_watchdog); the sink receives ``psm1/setpoint_cp``, whose stamp echoes the console
   sample the slave applied: console sample -> relay -> slave applies it -> one hop to the sink
   (watchdog with the bench limits, :data:`BENCH_WATCHDOG`).
"""
from telesurgery_ros.bench.measure import measure
from telesurgery_ros.bench.stack import BenchError, require_nodes, Unavailable
from telesurgery_ros.bench.stats import figure, summarize
from telesurgery_ros.core.contract import arm_topics, console_topic

RATE = 1000.0                                  # Hz, the teleoperation loop rate
TARGET_RELAY_RATIO = 2.0                       # issue 13: must not regress past 2x
SERVO = arm_topics()['servo_cp']
SETPOINT = arm_topics()['setpoint_cp']
ROUND_TRIP = console_topic(SETPOINT)
SLAVE_READY = 'PyBullet'                       # in the slave's start-up log line


def bare_hop(ctx, seconds, rate=RATE, label='bare-hop'):
    """Measure the baseline: one hop between two processes at ``rate``."""
    def start(stack):
        stack.source(SERVO, rate)
    return measure(ctx, label, start, [SERVO], seconds)


def relay_path(ctx, seconds, rate=RATE, label='relay-none', relay_params=None):
    """Measure source -> relay (profile none unless overridden) -> sink at ``rate``."""
    require_nodes('network_relay')
    params = {'profile': 'none', **(relay_params or {})}

    def start(stack):
        stack.node('network_relay', params)
        stack.source(console_topic(SERVO), rate)
    return measure(ctx, label, start, [SERVO], seconds)


# The benchmarks measure the teleoperation path, not the safety layer: the watchdog's latency,
# feedback and fault-count limits are relaxed so that a long link or a busy machine is measured
# moving instead of holding (safety-soak keeps the defaults; it is about the safety layer).
BENCH_WATCHDOG = {
    'commands.age_warn': 5.0, 'commands.age_hold': 5.0,
    'network.rtt_warn': 5.0, 'network.rtt_hold': 5.0,
    'feedback.timeout': 1.0, 'feedback.dead_timeout': 5.0, 'faults.count': 1000,
}


def full_stack(stack, relay_params=None, console_params=None, slave_params=None,
               watchdog_params=None, namespace=None, remaps=None):
    """
    Start the four nodes of one arm (relay profile ``none`` unless overridden).

    The watchdog starts last, once the slave has loaded its simulation, so that a slow start
    on a busy machine is not taken for a dead slave (which latches ESTOP).
    """
    common = {'namespace': namespace, 'remaps': remaps}
    slave = stack.node('slave_controller', slave_params or {}, **common)
    stack.node('network_relay', {'profile': 'none', **(relay_params or {})}, **common)
    stack.node('master_console', console_params or {}, **common)
    stack.wait_output(slave, SLAVE_READY, 60.0, required=False)
    stack.node('safety_watchdog', BENCH_WATCHDOG if watchdog_params is None else watchdog_params,
               **common)


def end_to_end(ctx, seconds, label='end-to-end'):
    """Measure console sample -> setpoint applied by the slave, with all four nodes."""
    require_nodes('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
    return measure(ctx, label, full_stack, [SETPOINT, SERVO, ROUND_TRIP], seconds, warmup=2.0)


def run(ctx):
    seconds = ctx.seconds(10.0, 2.0)
    result = ctx.new_result('latency', {'rate_hz': RATE, 'window_s': seconds})
    rows = []

    def add(name, lat, cpu=None):
        s = summarize(lat, 1e3)
        rows.append([name, s['n'], s['p50'], s['p99'], s['max']])
        ctx.progress(f'{name}: n={s["n"]} p50={s["p50"]:.3f} ms p99={s["p99"]:.3f} ms')
        return s

    ctx.progress(f'bare hop at {RATE:g} Hz for {seconds:g} s')
    base = add('bare hop (baseline)', bare_hop(ctx, seconds).latency(SERVO))
    result['figures'].append(figure('bare hop p50', base['p50'], 'ms'))
    result['figures'].append(figure('bare hop p99', base['p99'], 'ms'))
    rel = None
    try:
        ctx.progress('relay path, profile none')
        rel = add('relay, profile none', relay_path(ctx, seconds).latency(SERVO))
        ratio = rel['p50'] / base['p50'] if base['p50'] > 0 else None
        result['figures'].append(figure(
            'relay path p50 (2 hops + relay)', rel['p50'], 'ms', base['p50'], 'bare hop p50',
            f'<= {TARGET_RELAY_RATIO:g}x', None if ratio is None else
            ratio <= TARGET_RELAY_RATIO))
        result['figures'].append(figure('relay path p99', rel['p99'], 'ms', base['p99'],
                                        'bare hop p99'))
    except (Unavailable, BenchError) as exc:
        result['skipped'].append(f'relay path: {exc}')
    try:
        ctx.progress('end to end, whole stack')
        m = end_to_end(ctx, seconds)
        e2e = add('console sample -> slave setpoint', m.latency(SETPOINT))
        add('console -> relay -> slave input (whole stack)', m.latency(SERVO))
        rtt = add('round trip: console sample -> slave -> relay -> console', m.latency(ROUND_TRIP))
        result['figures'].append(figure(
            'console sample -> applied in slave p50', e2e['p50'], 'ms', base['p50'],
            'bare hop p50'))
        result['figures'].append(figure(
            'console sample -> applied in slave p99', e2e['p99'], 'ms', base['p99'],
            'bare hop p99'))
        result['figures'].append(figure(
            'round trip with zero impairment p50', rtt['p50'], 'ms', 2 * base['p50'],
            '2 bare hops'))
        result['details'] = {'end_to_end_cpu_percent': m.cpu}
    except (Unavailable, BenchError) as exc:
        result['skipped'].append(f'end to end: {exc}')
    if rel is not None and any(f['met'] is False for f in result['figures']):
        two_hops = 2 * base['p50']
        result['notes'].append(
            'relay target missed: the relay path is two DDS hops (two process wake-ups) '
            "against the baseline's one, so where a hop is cheap the ratio cannot fall far "
            f"below 2x. Its p50 of {rel['p50']:.3f} ms is {rel['p50'] - two_hops:+.3f} ms "
            f'from two bare hops ({two_hops:.3f} ms), roughly what the relay itself (its '
            'callback and the hand-off to its release thread) costs. Load average at start: '
            f"{result['machine']['load_average'][0]:.1f}. Below 2x needs one hop fewer: the "
            'relay composed in one process with the console (intra-process).')
    result['tables'].append({'title': 'one-way latency (ms)',
                             'columns': ['path', 'n', 'p50', 'p99', 'max'], 'rows': rows})
    return result
