"""
The watchdog evaluates on observations that matter and at deadlines, not by polling.

The same seeded stream of observations (commands with gaps, invalid and reordered commands,
feedback gaps, forces crossing the limits, network statistics, slave diagnostics, second
command sources, resets) is fed to two supervisors on one fake clock: one evaluated every
0.5 ms (the reference), one only when :attr:`dirty` is set or its :meth:`next_deadline` has
passed. Both must make the same transitions at the same times, with far fewer evaluations.
"""
import numpy as np
import pytest
from telesurgery_ros.core.contract import HOME_ORIENTATION, HOME_POSITION, SafetyState
from telesurgery_ros.core.safety import SafetyConfig, SafetySupervisor

STEP = 0.0005


class Clock:

    def __init__(self):
        self.t = 0.0        # command stamps are scenario times: the shared clock

    def __call__(self):
        return self.t


def scenario(seed, seconds):
    """Return a list of (time, observation name, args) sorted by time."""
    rng = np.random.default_rng(seed)
    events = []
    t = 0.0
    stamp = 0.0
    offset = np.zeros(3)
    while t < seconds:                     # commands: 500 Hz with gaps and faults
        t += 0.002
        if rng.random() < 0.002:
            t += rng.uniform(0.05, 0.4)   # the console stops for a while
        if rng.random() < 0.001:
            offset = rng.uniform(-0.004, 0.004, 3) * (rng.random() < 0.5)
        kind = rng.random()
        stamp = t
        position = np.array(HOME_POSITION) + offset
        if kind < 0.001:
            events.append((t, 'command', (stamp, position + 0.05, HOME_ORIENTATION)))
        elif kind < 0.002:
            events.append((t, 'command', (stamp - 0.004, position, HOME_ORIENTATION)))
        elif kind < 0.0025:
            events.append((t, 'jaw', ([float('nan')],)))
        else:
            events.append((t, 'command', (stamp, position, HOME_ORIENTATION)))
    t = 0.0
    warm_until = -1.0
    while t < seconds:                     # feedback: 200 Hz with gaps
        t += 0.005
        if rng.random() < 0.002:
            t += rng.uniform(0.1, 0.8)
        events.append((t, 'js', ()))
        events.append((t + 0.0001, 'cp', (np.array(HOME_POSITION), HOME_ORIENTATION)))
        if rng.random() < 0.002:
            warm_until = t + rng.uniform(0.2, 1.0)     # a stretch over the warning level
        force = 3.5 if t < warm_until else rng.uniform(0.0, 1.0)
        if rng.random() < 0.0003:
            force = 6.0                                 # one sample over the limit
        events.append((t + 0.0002, 'force', ((0.0, 0.0, force),)))
    t = 0.0
    while t < seconds:                     # 2 Hz statistics and diagnostics
        t += 0.5
        if rng.random() < 0.9:
            rtt = rng.choice([0.03, 0.06, 0.12, 0.2], p=[0.75, 0.15, 0.07, 0.03])
            events.append((t, 'stats', ('forward', rtt, 0.0)))
            events.append((t + 0.001, 'stats', ('backward', rtt, rng.choice([0.0, 0.05]))))
        level = rng.choice(['OK', 'WARN', 'ERROR'], p=[0.85, 0.1, 0.05])
        events.append((t + 0.002, 'diag', (level, f'loop {level}')))
    for _ in range(int(seconds / 3)):     # second sources, source changes, resets
        events.append((rng.uniform(0, seconds), 'second', ('second command source: node x',)))
        events.append((rng.uniform(0, seconds), 'change', ('new command source: node y',)))
        events.append((rng.uniform(0, seconds), 'reset', ()))
    return sorted(events, key=lambda e: e[0])


def feed(sup, name, args):
    if name == 'command':
        sup.on_command(*args)
    elif name == 'jaw':
        sup.on_jaw(*args)
    elif name == 'js':
        sup.on_measured_js()
    elif name == 'cp':
        sup.on_measured_cp(*args)
    elif name == 'force':
        sup.on_force(*args)
    elif name == 'stats':
        sup.on_network_stats(*args)
    elif name == 'diag':
        sup.on_slave_diagnostics(*args)
    elif name == 'second':
        sup.on_second_source(*args)
    elif name == 'change':
        sup.on_source_change(*args)
    elif name == 'reset':
        sup.evaluate()
        return sup.reset()[2]
    return None


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_events_and_deadlines_make_the_same_transitions_as_polling(seed):
    seconds = 30.0
    events = scenario(seed, seconds)
    config = SafetyConfig(fault_count=1000, degraded_clear_time=0.5)
    clock = Clock()
    dense = SafetySupervisor(config, clock)
    sparse = SafetySupervisor(config, clock)
    logs = {'dense': [], 'sparse': []}
    start = clock.t
    i = 0
    for k in range(1, int(seconds / STEP) + 1):
        clock.t = start + k * STEP
        while i < len(events) and start + events[i][0] <= clock.t:
            _t, name, args = events[i]
            for label, sup in (('dense', dense), ('sparse', sparse)):
                transition = feed(sup, name, args)
                if transition is not None:
                    logs[label].append((round(clock.t, 4), transition.current.encode()))
            i += 1
        for label, sup in (('dense', dense), ('sparse', sparse)):
            if label == 'sparse' and not sup.dirty:
                deadline = sup.next_deadline()
                if deadline is None or clock.t < deadline:
                    continue
            transition = sup.evaluate()
            if transition is not None:
                logs[label].append((round(clock.t, 4), transition.current.encode()))
    states = {s.split(':')[0] for _t, s in logs['dense']}
    print(f"seed {seed}: {len(logs['dense'])} transitions ({', '.join(sorted(states))}); "
          f'evaluations: polling {dense.evaluations}, events and deadlines '
          f'{sparse.evaluations}')
    assert len(logs['dense']) > 20 and {'HOLD', 'NOMINAL', 'DEGRADED', 'ESTOP'} <= states
    assert logs['sparse'] == logs['dense']
    assert sparse.evaluations < dense.evaluations / 3


def test_nominal_operation_needs_almost_no_evaluations():
    clock = Clock()
    sup = SafetySupervisor(SafetyConfig(), clock)
    evaluations_in_nominal = 0
    for k in range(1, 20001):                 # 10 s at 0.5 ms: commands 500 Hz, feedback 200 Hz
        clock.t = k * STEP
        if k % 4 == 0:
            sup.on_command(clock.t, HOME_POSITION, HOME_ORIENTATION)
        if k % 10 == 0:
            sup.on_measured_js()
            sup.on_measured_cp(HOME_POSITION, HOME_ORIENTATION)
            sup.on_force((0.0, 0.0, 0.1))
        if k % 1000 == 0:
            sup.on_network_stats('forward', 0.07, 0.0)
            sup.on_network_stats('backward', 0.07, 0.0)
        deadline = sup.next_deadline()
        if sup.dirty or (deadline is not None and clock.t >= deadline):
            nominal = sup.status.state == SafetyState.NOMINAL
            sup.evaluate()
            evaluations_in_nominal += nominal
    print(f'{sup.evaluations} evaluations in 10 s ({evaluations_in_nominal} in NOMINAL), '
          'polling at 200 Hz would make 2000')
    assert sup.status.state == SafetyState.NOMINAL
    assert evaluations_in_nominal <= 2 * 10 * 2 + 5     # the statistics (2 x 2 Hz), no more


def test_next_deadline_is_the_command_timeout_after_the_last_command():
    clock = Clock()
    sup = SafetySupervisor(SafetyConfig(command_timeout=0.1), clock)
    assert sup.next_deadline() is None
    sup.on_command(clock.t, HOME_POSITION, HOME_ORIENTATION)
    assert sup.dirty
    assert sup.next_deadline() == pytest.approx(clock.t + 0.1)
    sup.evaluate()
    clock.t += 0.05
    sup.on_command(clock.t, HOME_POSITION, HOME_ORIENTATION)
    sup.evaluate()
    assert sup.next_deadline() == pytest.approx(clock.t + 0.1)
    assert sup.status.state == SafetyState.HOLD
