"""
The console's arm model (core/predictor.py) against the slave's own logic, without ROS.

A small world stands in for the network and the patient site: the console's commands reach a
slave :class:`ArmController` (stepped at 1 kHz, as the slave steps its physics) after a forward
delay, the arm is the slave's setpoint (optionally stopped by a wall the model does not know),
and its measured pose reaches the predictor after a backward delay. Clocks are plain numbers.
"""
import heapq
import math

import numpy as np
import pytest

from telesurgery_ros.core import contract
from telesurgery_ros.core.arm_control import ArmController, ControlConfig
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.core.input_sources import smoothstep, TrajectoryInput
from telesurgery_ros.core.kinematics import PsmKinematics
from telesurgery_ros.core.predictor import (
    FROZEN, PREDICTING, Prediction, Predictor, PredictorConfig, STALE, STALLED, UNCORRECTED,
    WAITING)
from telesurgery_ros.core.teleop import quat_multiply, quat_normalize

KIN = PsmKinematics()
HOME_POSITION = np.array(contract.HOME_POSITION)
HOME_ORIENTATION = np.array(contract.HOME_ORIENTATION)
HOME = list(KIN.home_joints(HOME_POSITION, HOME_ORIENTATION)) + [0.0]
DT = 0.001
COMMAND_PERIOD = 0.002          # 500 Hz, the console's rate
FEEDBACK_PERIOD = 0.005         # 200 Hz, the slave's feedback rate


def trajectory(shape, seconds, seed=0):
    """Console commands (stamp, position, quaternion) at 500 Hz with a little timer jitter."""
    rng = np.random.default_rng(seed)
    source = TrajectoryInput(shape, 0.02, 0.4, ramp=0.5)
    out = []
    t = 0.0003
    while t < seconds:
        sample = source.sample(t)
        q = quat_normalize(quat_multiply(sample.orientation, HOME_ORIENTATION))
        out.append((t, HOME_POSITION + sample.position, q))
        t += COMMAND_PERIOD + rng.uniform(-0.0003, 0.0003)
    return out


def move(seconds, start, end, offset=(0.02, 0.0, 0.0)):
    """Move smoothly by ``offset`` between ``start`` and ``end`` s, then rest."""
    out = []
    t = 0.0003
    while t < seconds:
        x = smoothstep((t - start) / (end - start))
        out.append((t, HOME_POSITION + x * np.asarray(offset), HOME_ORIENTATION))
        t += COMMAND_PERIOD
    return out


class World:
    """
    Console -> forward delay -> slave (1 kHz) -> arm -> backward delay -> console.

    ``wall_x``: the arm cannot pass this x (m), a contact the model does not know; pressed on
    it, the measured force is 20 N along -x. ``stall``: (from, to) patient times in which the
    slave executes nothing and its arm stands still (a stalled process). Events run in time
    order; the predictor gets the commands when they are made, the echoes of executed commands,
    the measured poses and forces when they arrive, the round trip ``forward + backward``.
    """

    def __init__(self, predictor, forward=0.0, backward=0.0, wall_x=None, rtt_known=True):
        self.predictor = predictor
        self.forward, self.backward = forward, backward
        self.wall_x = wall_x
        # The watchdog's state is given as events, not streamed: no silence timeout.
        self.slave = ArmController(HOME, config=ControlConfig(require_safety=False,
                                                              safety_timeout=math.inf))
        if rtt_known:
            predictor.set_rtt(forward + backward)
        self.arm = []                  # (patient time, arm position)
        self.predictions = []          # (console time, Prediction)
        self.feedback_cut = None       # (from, to) console times with no feedback
        self.delivered = []            # (console time, measured position) given the predictor
        self.stall = None
        self.stamps = True             # measured poses carry their stamp (the arm's time)
        self.burst = None              # patient time -> extra backward delay of a pose

    def force(self):
        setpoint = KIN.fk(self.slave.follower.position[:6])[0]
        pressed = self.wall_x is not None and setpoint[0] > self.wall_x
        return np.array([-20.0 if pressed else 0.0, 0.0, 0.0])

    def arm_position(self):
        p = KIN.fk(self.slave.follower.position[:6])[0]
        if self.wall_x is not None and p[0] > self.wall_x:
            p = p.copy()
            p[0] = self.wall_x
        return p

    def run(self, commands, seconds, safety=((0.0, SafetyState.NOMINAL),),
            predict_period=FEEDBACK_PERIOD):
        """Run until ``seconds``; ``safety``: (console time, SafetyState) events."""
        events = []               # (time, order, kind, payload)
        for i, (stamp, p, q) in enumerate(commands):
            events.append((stamp, 1, i, 'command', (stamp, p, q)))
            events.append((stamp + self.forward, 2, i, 'arrive', (stamp, p, q)))
        for i, (when, state) in enumerate(safety):
            events.append((when, 0, i, 'safety', SafetyStatus(state)))
        # The slave's physics steps on the model's grid (from the first command's stamp): the
        # real phase between the two clocks is unknown and worth at most one step.
        origin = commands[0][0]
        k = 1
        while origin + k * DT <= seconds:
            events.append((origin + k * DT, 3, k, 'step', None))
            k += 1
        t = FEEDBACK_PERIOD
        while t <= seconds:
            events.append((t, 4, 0, 'publish', None))
            t += FEEDBACK_PERIOD
        t = predict_period
        while t <= seconds:
            events.append((t, 5, 0, 'predict', None))
            t += predict_period
        heapq.heapify(events)
        pred, slave = self.predictor, self.slave
        while events:
            now, _order, _i, kind, payload = heapq.heappop(events)
            if kind == 'command':
                pred.on_command(*payload)
            elif kind == 'arrive':
                stamp, p, q = payload
                if self.stalled(now):
                    continue
                if slave.command_pose(stamp, p, q, now).executed:
                    extra = self.burst(now) if self.burst else 0.0
                    heapq.heappush(events, (now + self.backward + extra, 2, stamp, 'echo', stamp))
            elif kind == 'echo':
                pred.on_echo(payload, now)
            elif kind == 'safety':
                slave.on_safety(payload, now)      # the watchdog is beside the slave ...
                pred.on_safety(payload, now)       # ... and heard at once on one machine
            elif kind == 'step':
                if not self.stalled(now):
                    slave.update(now, DT, slave.follower.position)
                self.arm.append((now, self.arm_position()))
            elif kind == 'publish':
                position = self.arm_position()
                quaternion = KIN.fk_pose(slave.follower.position[:6])[1]
                stamp = self.arm[-1][0] if self.arm else now     # the state's physics time
                extra = self.burst(now) if self.burst else 0.0
                heapq.heappush(events, (now + self.backward + extra, 4, now, 'measured',
                                        (position, quaternion, self.force(), stamp)))
            elif kind == 'measured':
                cut = self.feedback_cut
                if cut is None or not cut[0] <= now < cut[1]:
                    position, quaternion, force, stamp = payload
                    pred.on_measured(position, quaternion, now, stamp if self.stamps else None)
                    pred.on_force(force, now)
                    self.delivered.append((now, position))
            elif kind == 'predict':
                self.predictions.append((now, pred.predict(now)))
        return self

    def stalled(self, t):
        return self.stall is not None and self.stall[0] <= t < self.stall[1]

    def arm_at(self, t):
        """Return the arm position at patient time ``t`` (held between the 1 kHz steps)."""
        times = np.array([a[0] for a in self.arm])
        i = max(0, int(np.searchsorted(times, t + 1e-12, side='right')) - 1)
        return self.arm[i][1]

    def prediction_errors(self):
        """(console time, |predicted(t) - arm(t + forward)|) for every prediction."""
        end = self.arm[-1][0]
        return np.array([(t, float(np.linalg.norm(p.position - self.arm_at(t + self.forward))))
                         for t, p in self.predictions if t + self.forward <= end])


def test_model_agrees_with_arm_control_to_a_micrometre():
    """Same command stream, no delay, no mismatch: the model is the slave's setpoint."""
    for shape in ('circle', 'suture'):
        commands = trajectory(shape, 4.0, seed=3)
        predictor = Predictor(HOME, config=PredictorConfig(history=5.0))
        world = World(predictor).run(commands, 4.0)
        joints = np.array([predictor.joints_at(t) for t, _p in world.arm])
        slave = ArmController(HOME, config=ControlConfig(require_safety=False))
        reference = []
        pending = list(commands)
        for t, _arm in world.arm:
            while pending and pending[0][0] < t:
                stamp, p, q = pending.pop(0)
                slave.command_pose(stamp, p, q, stamp)
            reference.append(list(slave.update(t, DT, slave.follower.position)[0][:6]))
        joint_error = float(np.abs(joints - np.array(reference)).max())
        errors = world.prediction_errors()
        steady = errors[errors[:, 0] > 0.1, 1]
        travel = np.ptp(np.array([a for _t, a in world.arm]), axis=0).max()
        print(f'{shape}: {len(commands)} commands, travel {travel * 1e3:.1f} mm, model vs '
              f'arm_control max joint difference {joint_error:.2e}, predicted_cp vs arm max '
              f'{steady.max() * 1e6:.3f} um')
        assert travel > 0.01
        assert joint_error < 1e-9
        assert steady.max() < 1e-6
        assert world.predictions[-1][1].state == PREDICTING


def test_constant_bias_is_corrected_after_one_round_trip():
    """The arm stops 5 mm short of the commanded 20 mm (a wall the model does not know)."""
    forward = backward = 0.06
    rtt = forward + backward
    tau = 0.01
    predictor = Predictor(HOME, config=PredictorConfig(correction_time_constant=tau,
                                                       contact_force=0.0))
    world = World(predictor, forward, backward, wall_x=HOME_POSITION[0] + 0.015)
    world.run(move(2.0, 0.2, 0.8), 2.0)
    errors = world.prediction_errors()
    uncorrected = [float(np.linalg.norm(KIN.fk(predictor.joints_at(t))[0]
                                        - world.arm_at(t + forward))) for t in (1.5, 1.9)]
    # The model (the console's command) stops moving when the move ends at 0.8 s; from then on
    # the mismatch is constant, and the measured pose one round trip later shows it.
    settled = 0.8 + rtt
    after = errors[errors[:, 0] >= settled + 5 * tau, 1]
    during = errors[(errors[:, 0] > 0.8) & (errors[:, 0] < settled), 1]
    print(f'RTT {rtt * 1e3:.0f} ms: model off by {uncorrected[0] * 1e3:.2f} mm; e_pred max '
          f'{during.max() * 1e3:.2f} mm in the round trip after the stop, then max '
          f'{after.max() * 1e6:.2f} um (from {settled + 5 * tau:.2f} s)')
    assert min(uncorrected) == pytest.approx(0.005, abs=1e-4)
    assert during.max() > 0.001        # before the correction arrives the error is real
    assert after.max() < 1e-5
    assert predictor.bias()[0] == pytest.approx(0.005, abs=1e-5)


def test_hold_freezes_the_prediction_where_the_arm_froze():
    forward = backward = 0.05
    predictor = Predictor(HOME)
    world = World(predictor, forward, backward)
    hold, release = 1.5, 2.5
    world.run(trajectory('circle', 3.5), 3.5,
              safety=[(0.0, SafetyState.NOMINAL), (hold, SafetyState.HOLD),
                      (release, SafetyState.NOMINAL)])
    frozen = np.array([p.position for t, p in world.predictions if hold <= t < release])
    states = {p.state for t, p in world.predictions if hold <= t < release}
    arm_frozen = world.arm_at(hold + 0.5)
    moving = np.array([p.position for t, p in world.predictions if release + 0.2 <= t])
    span = float(np.ptp(frozen, axis=0).max())
    offset = float(np.linalg.norm(frozen[-1] - arm_frozen))
    print(f'HOLD for {release - hold:.1f} s: prediction moved {span * 1e6:.2f} um, '
          f'{offset * 1e6:.1f} um from where the arm froze; after release it moves '
          f'{np.ptp(moving, axis=0).max() * 1e3:.1f} mm')
    assert states == {FROZEN}
    # Frozen: the only change is the correction settling on the arm's frozen pose (the circle
    # would have moved the prediction by 50 mm in that second).
    assert span < 2e-5
    assert offset < 5e-5
    assert np.ptp(moving, axis=0).max() > 0.005
    assert world.predictions[-1][1].state == PREDICTING


def test_an_outage_marks_the_prediction_stale_at_the_last_measured_pose():
    forward = backward = 0.03
    timeout = 0.25
    predictor = Predictor(HOME, config=PredictorConfig(feedback_timeout=timeout))
    world = World(predictor, forward, backward)
    world.feedback_cut = (1.5, 2.5)
    world.run(trajectory('circle', 3.5), 3.5)
    last_measured = [p for t, p in world.delivered if t < 1.5][-1]
    states = [(t, p.state) for t, p in world.predictions]
    stale = [(t, p) for t, p in world.predictions if p.state == STALE]
    first_stale = stale[0][0]
    last_stale = stale[-1][0]
    print(f'feedback cut 1.5-2.5 s: stale from {first_stale:.3f} s to {last_stale:.3f} s')
    assert 1.5 + timeout - 0.01 <= first_stale <= 1.5 + timeout + 0.01
    assert last_stale < 2.5 + 0.01
    for _t, p in stale:
        assert np.allclose(p.position, last_measured, atol=1e-12)
    assert all(s == PREDICTING for t, s in states if 1.0 < t < 1.5 or t > 2.6)


def test_states_before_feedback_and_before_a_round_trip():
    predictor = Predictor(HOME)
    assert predictor.predict(0.0).state == WAITING
    predictor.on_command(0.0, HOME_POSITION + (0.01, 0.0, 0.0), HOME_ORIENTATION)
    predictor.on_measured(HOME_POSITION, HOME_ORIENTATION, 0.45)
    # Like the slave, the model holds until a safety state is heard; frozen with no round
    # trip to line it up, the prediction is the measured pose.
    frozen = predictor.predict(0.5)
    assert frozen.state == FROZEN
    assert np.allclose(frozen.position, HOME_POSITION, atol=1e-12)
    predictor.on_safety(SafetyStatus(SafetyState.NOMINAL), 0.5)
    predictor.on_command(0.502, HOME_POSITION, HOME_ORIENTATION)
    predictor.on_measured(HOME_POSITION, HOME_ORIENTATION, 0.51)
    assert predictor.predict(0.52).state == UNCORRECTED
    assert predictor.reseeds == 0
    predictor.set_rtt(0.05)
    predictor.on_measured(HOME_POSITION, HOME_ORIENTATION, 0.53)
    prediction = predictor.predict(0.54)
    assert isinstance(prediction, Prediction) and prediction.state == PREDICTING
    assert np.allclose(prediction.position, HOME_POSITION, atol=1e-9)
    predictor.set_rtt(float('nan'))
    assert predictor.rtt is None


def test_first_measured_pose_far_from_the_model_restarts_it_there():
    predictor = Predictor(HOME)
    predictor.on_command(0.0, HOME_POSITION, HOME_ORIENTATION)
    elsewhere = HOME_POSITION + (0.01, -0.01, -0.02)
    predictor.on_measured(elsewhere, HOME_ORIENTATION, 0.01)
    assert predictor.reseeds == 1
    assert np.allclose(predictor.model_pose()[0], elsewhere, atol=1e-9)
    assert predictor.arm.checker.last_position is None


def press_and_return(seconds):
    """Push 30 mm along x (0.2-1.2 s), hold, come back (1.6-2.2 s)."""
    out = []
    t = 0.0003
    while t < seconds:
        x = smoothstep((t - 0.2) / 1.0) - smoothstep((t - 1.6) / 0.6)
        out.append((t, HOME_POSITION + (0.03 * x, 0.0, 0.0), HOME_ORIENTATION))
        t += COMMAND_PERIOD
    return out


def test_contact_force_keeps_the_prediction_on_the_surface():
    """A wall at 15 mm stops the arm while the command pushes on to 30 mm, then returns."""
    forward = backward = 0.06
    rtt = forward + backward
    wall = HOME_POSITION[0] + 0.015
    results = {}
    for contact_force in (0.5, 0.0):
        predictor = Predictor(HOME, config=PredictorConfig(contact_force=contact_force))
        world = World(predictor, forward, backward, wall_x=wall)
        world.run(press_and_return(3.0), 3.0)
        errors = world.prediction_errors()
        model_x = np.array([KIN.fk(predictor.joints_at(t))[0][0] for t, _p in
                            world.predictions])
        touch = errors[np.argmax(model_x >= wall), 0]       # the model reaches the wall
        after = errors[errors[:, 0] >= touch + rtt + 0.03, 1]
        results[contact_force] = (touch, after.max(), predictor.contacts)
    touch, with_model, contacts = results[0.5]
    plain = results[0.0][1]
    print(f'wall reached by the model at {touch:.3f} s; from one RTT later e_pred max '
          f'{with_model * 1e3:.3f} mm with the contact model ({contacts} contact), '
          f'{plain * 1e3:.2f} mm with the correction alone')
    assert contacts == 1
    assert with_model < 2e-4
    assert plain > 0.002


def test_a_stalled_slave_stops_the_prediction_where_the_arm_stopped():
    """The slave executes nothing for 0.6 s: no echo, so the ghost stops with the arm."""
    forward = backward = 0.06
    rtt = forward + backward
    timeout = 0.1
    predictor = Predictor(HOME, config=PredictorConfig(echo_timeout=timeout))
    world = World(predictor, forward, backward)
    world.stall = (1.5, 2.1)
    world.run(trajectory('circle', 3.5), 3.5)
    states = [(t, p.state) for t, p in world.predictions]
    stalled = [t for t, state in states if state == STALLED]
    frozen_arm = world.arm_at(1.8)
    # The last command the slave executed was sent at 1.5 - forward; it is echoed at
    # 1.5 + backward; the next one is overdue one round trip plus the timeout after it was sent.
    expected = 1.5 - forward + rtt + timeout
    errors = world.prediction_errors()
    during = errors[(errors[:, 0] > stalled[0] + 0.02) & (errors[:, 0] < 2.1 - forward), 1]
    ghost = [p.position for t, p in world.predictions if stalled[0] < t < stalled[-1]]
    offset = float(np.linalg.norm(ghost[-1] - frozen_arm))
    print(f'slave stalled 1.5-2.1 s: ghost stalled from {stalled[0]:.3f} s (expected '
          f'{expected:.3f} s) to {stalled[-1]:.3f} s, {offset * 1e6:.1f} um from the arm; '
          f'e_pred max {during.max() * 1e3:.3f} mm while stalled')
    assert predictor.stalls == 1
    assert expected - 0.01 <= stalled[0] <= expected + 0.01
    assert offset < 5e-5
    assert during.max() < 2e-4
    # The slave resumes at 2.1 s with the commands sent from 2.1 - forward and catches up with
    # them at its velocity limits (the arm moves 20 mm in 0.1 s); their echo reaches the
    # console one round trip later and the model replays them, so the ghost is where the arm
    # is within millimetres (the slave resumed with the velocity it stalled with, the model
    # from rest), and exact once the correction has seen the catch-up.
    echoed = 2.1 - forward + rtt
    catch_up = errors[(errors[:, 0] > echoed + 0.01) & (errors[:, 0] < echoed + 2 * rtt), 1]
    settled = errors[errors[:, 0] > echoed + 2 * rtt, 1]
    print(f'after the resume: e_pred max {catch_up.max() * 1e3:.2f} mm during the catch-up, '
          f'then {settled.max() * 1e3:.3f} mm')
    assert catch_up.max() < 0.005
    assert settled.max() < 2e-4
    assert all(state == PREDICTING for t, state in states if t > 2.1 + rtt)


def test_poses_delayed_in_bursts_are_compared_with_the_model_as_late():
    """Every 50 ms the way back stalls for 40 ms: the poses then arrive in a burst."""
    forward = backward = 0.06
    results = {}
    for stamps in (True, False):
        predictor = Predictor(HOME)
        world = World(predictor, forward, backward)
        world.stamps = stamps
        world.burst = lambda t: max(0.0, 0.04 - (t % 0.05))
        # The round trip the console measures: its echoes come back the same bursty way.
        typical = float(np.median([world.burst(t) for t in np.arange(0.0, 1.0, 0.0005)]))
        predictor.set_rtt(forward + backward + typical)
        world.run(trajectory('circle', 3.0), 3.0)
        errors = world.prediction_errors()
        results[stamps] = errors[errors[:, 0] > 1.0, 1]
    with_stamps, without = results[True], results[False]
    print(f'bursty way back: e_pred RMS {np.sqrt(np.mean(with_stamps ** 2)) * 1e3:.3f} mm '
          f"(max {with_stamps.max() * 1e3:.3f}) using the poses' stamps, "
          f'{np.sqrt(np.mean(without ** 2)) * 1e3:.3f} mm (max {without.max() * 1e3:.3f}) '
          'on arrival times alone')
    assert with_stamps.max() < 2e-4
    assert without.max() > 4 * with_stamps.max()


def test_command_decimation_trades_micrometres_for_cpu():
    """Fed every other command, the model stays within tens of micrometres of the slave."""
    commands = trajectory('suture', 4.0, seed=2)
    full = Predictor(HOME, config=PredictorConfig(history=5.0))
    half = Predictor(HOME, config=PredictorConfig(history=5.0, command_decimation=2))
    for predictor in (full, half):
        predictor.on_safety(SafetyStatus(SafetyState.NOMINAL), 0.0)
        for command in commands:
            predictor.on_command(*command)
        predictor.advance(4.0)
    gaps = [float(np.linalg.norm(KIN.fk(half.joints_at(t))[0] - KIN.fk(full.joints_at(t))[0]))
            for t in np.arange(0.5, 3.9, 0.005)]
    print(f'every 2nd command: {max(gaps) * 1e6:.1f} um from the full stream at most')
    assert 0.0 < max(gaps) < 5e-5


def test_the_size_of_the_correction():
    predictor = Predictor(HOME)
    assert predictor.bias() == (0.0, 0.0)
    predictor.bias_position = np.array([0.003, 0.0, 0.004])
    half = math.radians(3.0) / 2.0
    predictor.bias_rotation = np.array([0.0, math.sin(half), 0.0, math.cos(half)])
    distance, angle = predictor.bias()
    assert distance == pytest.approx(0.005) and math.degrees(angle) == pytest.approx(3.0)
