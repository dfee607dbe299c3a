"""
``safety-soak`` (not in ``all``): nominal scripted operation under ``rome_beijing_2024``.

The whole stack runs the scripted suture motion with the watchdog's default thresholds; the
suite counts safety-state transitions (HOLD and ESTOP entries are false alarms here, since
nothing is wrong beyond the profile) and the share of time in each state.
"""
from telesurgery_ros.bench.latency import full_stack
from telesurgery_ros.bench.measure import measure
from telesurgery_ros.bench.stack import require_nodes
from telesurgery_ros.bench.stats import figure
from telesurgery_ros.bench.tracking import state_shares
from telesurgery_ros.core.contract import arm_topics

PROFILE = 'rome_beijing_2024'
CONSOLE = {'trajectory.shape': 'suture'}


def transitions(safety, window):
    """``(from, to, reason)`` of every state change within ``window``."""
    start, end = window
    out, last = [], None
    for m in safety:
        state, _sep, reason = m['data'].partition(':')
        state = state.strip()
        if last is not None and state != last and start * 1e9 <= m['recv_ns'] <= end * 1e9:
            out.append((last, state, reason.strip()))
        last = state
    return out


def run(ctx):
    require_nodes('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
    seconds = ctx.seconds(300.0, 3.0)
    result = ctx.new_result('safety-soak', {'profile': PROFILE, 'window_s': seconds})
    ctx.progress(f'{PROFILE} for {seconds:g} s')

    def start(stack):
        full_stack(stack, relay_params={'profile': PROFILE}, console_params=CONSOLE)
    m = measure(ctx, 'soak', start, [arm_topics()['measured_cp']], seconds, warmup=2.0,
                sink_options={'safety': True})
    changes = transitions(m.recording.safety, m.window.span)
    shares = state_shares(m.recording.safety, m.window.span)
    minutes = m.window.seconds / 60.0
    for state in ('HOLD', 'ESTOP'):
        count = sum(1 for _a, b, _r in changes if b == state)
        result['figures'].append(figure(f'{state} entries per minute', count / minutes, '/min',
                                        target='0', met=count == 0))
    result['tables'].append({'title': 'state transitions',
                             'columns': ['from', 'to', 'reason'],
                             'rows': [list(c) for c in changes[:50]]})
    result['tables'].append({'title': 'share of time per state',
                             'columns': ['state', 'share'],
                             'rows': [[k, v] for k, v in shares.items()]})
    return result
