"""
Soak: the whole stack under rome_beijing_2024 for 10 minutes, zero false trips.

All four nodes run with their defaults (master_console's scripted circle, network_relay's
default profile rome_beijing_2024, slave_controller, safety_watchdog). Once the stack is
NOMINAL, any HOLD or ESTOP is a false trip: nothing is wrong but the network's ordinary
delay, jitter and 0.1 % loss. Not in the default suite: ``make test-long`` (or
``pytest -m long test/test_safety_soak.py -s``). ``SAFETY_SOAK_SECONDS`` shortens it.
"""
import os
import time

from diagnostic_msgs.msg import DiagnosticArray
from harness import wait_for
import pytest
from std_msgs.msg import String

from telesurgery_ros.core import contract
from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, SAFETY_QOS
from test_safety_watchdog import state, watchdog_values

DURATION = float(os.environ.get('SAFETY_SOAK_SECONDS', '600'))
STATE = contract.SAFETY_STATE_TOPIC


def cpu_seconds(pid):
    """Return the user + system CPU time (s) of a process so far."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


@pytest.mark.long
@pytest.mark.ros
@pytest.mark.timeout(DURATION + 300)
def test_rome_beijing_soak_has_no_false_trips(launcher, probe):
    probe.record(String, STATE, SAFETY_QOS)
    probe.record(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
    launcher.start('slave_controller')
    watchdog = launcher.start('safety_watchdog')
    launcher.start('network_relay', params={'profile': 'rome_beijing_2024'})
    # Let the patient side finish starting (PyBullet, DDS discovery) before the console
    # commands: until then the watchdog holds ('waiting for commands'), which is no trip.
    wait_for(lambda: watchdog_values(probe, 'slave health').get('slave_loop_level') == 'OK',
             60.0, what='the slave loop running at rate')
    launcher.start('master_console')
    wait_for(lambda: (s := state(probe)) is not None and s.state.allows_motion, 60.0,
             what=f'the stack NOMINAL (last: {state(probe)})')
    start = time.monotonic()
    load_start = f'{os.getloadavg()[0]:.1f}'
    cpu_start = cpu_seconds(watchdog.pid)
    print(f'stack up: {state(probe).encode()}; soaking for {DURATION:.0f} s')
    trips = []
    states = {}
    seen = 0
    previous_allowed = True
    while time.monotonic() - start < DURATION:
        time.sleep(1.0)
        timed = probe.timed(STATE)
        for t, msg in timed[seen:]:
            status = contract.SafetyStatus.decode(msg.data)
            if t < start:
                continue
            states[status.state.name] = states.get(status.state.name, 0) + 1
            if not status.state.allows_motion and previous_allowed:
                trips.append((t - start, status))
                print(f'TRIP at {t - start:.1f} s: {status.encode()}')
            previous_allowed = status.state.allows_motion
        seen = len(timed)
    cpu = (cpu_seconds(watchdog.pid) - cpu_start) / (time.monotonic() - start)
    print(f'safety_watchdog CPU: {cpu * 100:.1f} % of one core')
    summary = watchdog_values(probe, 'state')
    network = watchdog_values(probe, 'network')
    commands = watchdog_values(probe, 'commands')
    validity = watchdog_values(probe, 'command validity')
    print(f'soak {DURATION:.0f} s under rome_beijing_2024: {len(trips)} false trips; '
          f'safety/state messages by state {states}; machine load average at the start '
          f'{load_start}, at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    print(f"watchdog: transitions {summary.get('transitions')}, hold entries "
          f"{summary.get('hold_entries')}, estops {summary.get('estops')}; "
          f"rtt estimate {network.get('rtt_estimate_s')} s, loss forward "
          f"{network.get('forward_loss')} backward {network.get('backward_loss')}; command "
          f"stamp age {commands.get('stamp_age_s')} s; accepted {validity.get('accepted')}, "
          f"rejected {validity.get('rejected_total')}, out of order "
          f"{validity.get('out_of_order')}")
    assert not trips, f'{len(trips)} false trips: {trips[:5]}'


@pytest.mark.long
def test_ten_simulated_minutes_of_rome_beijing_have_no_false_trips():
    """
    The same soak in simulated time: the pure supervisor behind core/netem's link model.

    Independent of the machine's load: only the network can trip it here.
    """
    from test_safety import simulate_profile
    sup, transitions, after_start = simulate_profile('rome_beijing_2024', 600.0)
    trips = [t for t in after_start if not t.current.state.allows_motion]
    print(f'rome_beijing_2024, 600 s simulated: {len(trips)} false trips; transitions '
          f'{[t.current.encode() for t in transitions]}; commands accepted '
          f'{sup.checker.accepted}, dropped out of order {sup.out_of_order}')
    assert transitions and transitions[0].current.state.allows_motion
    assert not trips
