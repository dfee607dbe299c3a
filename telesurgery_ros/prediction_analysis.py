"""
How well the console's ghost predicts the arm: e_pred and e_delayed from one run's recording.

Everything is on one clock (one machine: the system clock every node and the recorder stamp
with). For every ``console/<arm>/predicted_cp`` sample, stamped ``t`` with the console command
it was made for:

- ``d_fwd(t)``: the forward delay that command really had, from its patient-side arrival (the
  receive time of the ``<arm>/servo_cp`` message carrying stamp ``t``; commands the relay lost
  are interpolated from their neighbours, never across a gap longer than ``MAX_GAP``);
- ``arm(t + d_fwd(t))``: the patient-side ``<arm>/measured_cp``, interpolated by its header
  stamp (the physics time of the state), at the moment the command arrived;
- ``e_pred(t) = |predicted_cp(t) - arm(t + d_fwd(t))|``: what the ghost gets wrong;
- ``e_delayed(t) = |console measured_cp(t) - arm(t + d_fwd(t))|``, with the console-side
  ``measured_cp`` last received by ``t``: what the surgeon sees without the ghost.

Samples count while the safety state (as recorded by ``t``) lets the arm move (NOMINAL,
DEGRADED): in HOLD both errors are trivially small. :func:`load_mcap` reads the streams from an
MCAP file written by :mod:`telesurgery_ros.recorder` (``make demo``); the bench passes the arrays
its sink recorded.
"""
from dataclasses import dataclass
import math

import numpy as np

from telesurgery_ros.bench.stats import hold_positions, interp_positions
from telesurgery_ros.core import contract
from transforms3d import quaternions

MOVING = ('NOMINAL', 'DEGRADED')
MAX_GAP = 0.05          # s: d_fwd is not interpolated across longer gaps in the commands
POSE = 'geometry_msgs/msg/PoseStamped'


@dataclass
class Streams:
    """The recorded streams, in seconds on one clock and metres (arrays)."""

    predicted_stamp: np.ndarray        # console/<arm>/predicted_cp header stamps
    predicted_position: np.ndarray     # N x 3
    command_stamp: np.ndarray          # <arm>/servo_cp header stamps ...
    command_arrival: np.ndarray        # ... and patient-side receive times
    arm_stamp: np.ndarray              # <arm>/measured_cp header stamps (physics time)
    arm_position: np.ndarray
    console_time: np.ndarray           # console/<arm>/measured_cp receive times
    console_position: np.ndarray
    safety: list = None                # [(receive time, state name)]; None: always moving
    # Orientations (N x 4, x y z w) of the predicted, arm and console streams, when recorded
    # (the demo's MCAP has them, the bench's sink keeps positions only).
    predicted_orientation: np.ndarray = None
    arm_orientation: np.ndarray = None
    console_orientation: np.ndarray = None


def _array(values, columns=None):
    data = np.asarray(values, dtype=float)
    return data.reshape(-1, columns) if columns else data.reshape(-1)


def streams(predicted, commands, arm, console, safety=None):
    """Build :class:`Streams` from (times, positions) pairs: see the field comments."""
    return Streams(_array(predicted[0]), _array(predicted[1], 3), _array(commands[0]),
                   _array(commands[1]), _array(arm[0]), _array(arm[1], 3), _array(console[0]),
                   _array(console[1], 3), safety)


def forward_delays(query, command_stamp, command_arrival, max_gap=MAX_GAP):
    """``d_fwd`` at the command stamps ``query``: arrival - stamp, interpolated; NaN in gaps."""
    query = _array(query)
    out = np.full(query.shape, np.nan)
    if command_stamp.size == 0:
        return out
    order = np.argsort(command_arrival, kind='stable')
    stamps, first = np.unique(command_stamp[order], return_index=True)   # first arrival
    delays = command_arrival[order][first] - stamps
    last = stamps.size - 1
    index = np.searchsorted(stamps, query)          # stamps[index - 1] < query <= stamps[index]
    high, low = np.minimum(index, last), np.maximum(index - 1, 0)
    exact = stamps[high] == query
    between = (index > 0) & (index <= last) & (stamps[high] - stamps[low] <= max_gap)
    ok = exact | between
    out[ok] = np.interp(query[ok], stamps, delays)
    return out


def moving_mask(query, safety):
    """Tell where the last safety state recorded by each query time lets the arm move."""
    query = _array(query)
    if safety is None:
        return np.ones(query.shape, bool)
    if not safety:
        return np.zeros(query.shape, bool)
    times = np.array([s[0] for s in safety], float)
    moving = np.array([s[1] in MOVING for s in safety], bool)
    order = np.argsort(times, kind='stable')
    index = np.searchsorted(times[order], query, side='right') - 1
    return np.where(index >= 0, moving[order][np.maximum(index, 0)], False)


def errors(data):
    """
    Per predicted sample: ``t``, ``d_fwd``, ``e_pred``, ``e_delayed`` (s, s, m, m).

    Only samples with every quantity known and the arm allowed to move are kept.
    """
    t = data.predicted_stamp
    d_fwd = forward_delays(t, data.command_stamp, data.command_arrival)
    arm = interp_positions(t + d_fwd, data.arm_stamp, data.arm_position)
    e_pred = np.linalg.norm(data.predicted_position - arm, axis=1)
    e_delayed = np.linalg.norm(
        hold_positions(t, data.console_time, data.console_position) - arm, axis=1)
    keep = np.isfinite(e_pred) & np.isfinite(e_delayed) & moving_mask(t, data.safety)
    out = {'t': t[keep], 'd_fwd': d_fwd[keep], 'e_pred': e_pred[keep],
           'e_delayed': e_delayed[keep]}
    if data.predicted_orientation is not None and data.arm_orientation is not None and (
            data.console_orientation is not None):
        arm_q = nearest_rows(t + d_fwd, data.arm_stamp, data.arm_orientation)
        console_q = hold_rows(t, data.console_time, data.console_orientation)
        out['a_pred'] = angles(data.predicted_orientation, arm_q)[keep]
        out['a_delayed'] = angles(console_q, arm_q)[keep]
    return out


def nearest_rows(query, times, rows):
    """Return the row whose time is nearest each query time (NaN outside the times)."""
    return _rows(np.rint(interp_positions(query, times, _index(times))[:, 0]), rows)


def hold_rows(query, times, rows):
    """Return the last row received at or before each query time (NaN before any)."""
    return _rows(hold_positions(query, times, _index(times))[:, 0], rows)


def _index(times):
    """Row numbers as three equal columns (the position helpers then look up rows)."""
    return np.repeat(np.arange(len(times), dtype=float)[:, None], 3, axis=1)


def _rows(index, rows):
    out = np.full((index.size, rows.shape[1]), np.nan)
    ok = np.isfinite(index)
    out[ok] = rows[index[ok].astype(int)]
    return out


def angles(a, b):
    """Return the angle (rad) between quaternion rows ``a`` and ``b`` (x y z w; NaN: NaN)."""
    out = np.full(len(a), np.nan)
    for i, (qa, qb) in enumerate(zip(a, b)):
        if np.all(np.isfinite(qa)) and np.all(np.isfinite(qb)):
            relative = quaternions.qmult(quaternions.qconjugate(_wxyz(qa)), _wxyz(qb))
            out[i] = quaternions.quat2axangle(relative)[1]
    return np.minimum(out, 2.0 * math.pi - out)       # the short way round


def _wxyz(q):
    """Reorder x y z w (ROS) to w x y z (transforms3d), normalised."""
    q = np.asarray(q, float)
    return np.array([q[3], q[0], q[1], q[2]]) / np.linalg.norm(q)


def summarize(values):
    """RMS, p95 and max (m) and the number of samples; None figures when empty."""
    values = _array(values)
    if values.size == 0:
        return {'rms_m': None, 'p95_m': None, 'max_m': None, 'samples': 0}
    return {'rms_m': float(np.sqrt(np.mean(values ** 2))),
            'p95_m': float(np.percentile(values, 95.0)), 'max_m': float(values.max()),
            'samples': int(values.size)}


def summarize_angles(values):
    """Summarize angles (rad) as RMS, p95 and max in degrees; None figures when empty."""
    values = _array(values)
    if values.size == 0:
        return {'rms_deg': None, 'p95_deg': None, 'max_deg': None}
    degrees = np.degrees(values)
    return {'rms_deg': float(np.sqrt(np.mean(degrees ** 2))),
            'p95_deg': float(np.percentile(degrees, 95.0)), 'max_deg': float(degrees.max())}


def analyse(data):
    """Return the report fields ``prediction``, ``delayed_view``, ``forward_delay_ms``, series."""
    series = errors(data)
    d_fwd = series['d_fwd'] * 1e3
    prediction, delayed = summarize(series['e_pred']), summarize(series['e_delayed'])
    if 'a_pred' in series:
        prediction.update(summarize_angles(series['a_pred']))
        delayed.update(summarize_angles(series['a_delayed']))
    return {
        'prediction': prediction,
        'delayed_view': delayed,
        'forward_delay_ms': {'p50': float(np.median(d_fwd)) if d_fwd.size else None,
                             'max': float(d_fwd.max()) if d_fwd.size else None},
        'series': series,
    }


def report_fields(result):
    """``analyse()`` output without the series (what goes into report.json)."""
    return {k: v for k, v in result.items() if k != 'series'}


def settle_times(t, e_pred, events, threshold=0.001, until=None):
    """
    For each event time, how long ``e_pred`` takes to be back under ``threshold`` for good.

    "For good" means for every later sample before the next event (or ``until``). An event
    whose error never exceeded the threshold settles in 0 s; one that never settles gets NaN.
    """
    t, e_pred = _array(t), _array(e_pred)
    bounds = list(events[1:]) + [math.inf if until is None else until]
    out = []
    for start, end in zip(events, bounds):
        window = (t >= start) & (t < end)
        if not np.any(window):
            out.append(math.nan)
            continue
        tw, ew = t[window], e_pred[window]
        above = np.nonzero(ew >= threshold)[0]
        if above.size == 0:
            out.append(0.0)
        elif above[-1] + 1 < tw.size:
            out.append(float(tw[above[-1] + 1] - start))
        else:
            out.append(math.nan)
    return out


# --- reading a recording ------------------------------------------------------------------

def load_mcap(path, arm=contract.DEFAULT_ARM):
    """Read the streams of :func:`analyse` from an MCAP recording (receive time = log time)."""
    from mcap.reader import make_reader
    from rclpy.serialization import deserialize_message
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import String

    patient = contract.arm_topics(arm)
    names = {
        '/' + contract.predicted_topic(arm): 'predicted',
        '/' + patient['servo_cp']: 'command',
        '/' + patient['measured_cp']: 'arm',
        '/' + contract.console_topic(patient['measured_cp']): 'console',
        '/' + contract.SAFETY_STATE_TOPIC: 'safety',
    }
    rows = {role: [] for role in names.values()}
    with open(path, 'rb') as handle:
        for _schema, channel, message in make_reader(handle).iter_messages(topics=list(names)):
            role = names[channel.topic]
            received = message.log_time * 1e-9
            if role == 'safety':
                text = deserialize_message(message.data, String).data
                rows[role].append((received, text.split(':', 1)[0].strip()))
                continue
            msg = deserialize_message(message.data, PoseStamped)
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            p, q = msg.pose.position, msg.pose.orientation
            rows[role].append((received, stamp, p.x, p.y, p.z, q.x, q.y, q.z, q.w))

    def pose_rows(role):
        data = np.array(rows[role], float).reshape(-1, 9)
        return data[:, 0], data[:, 1], data[:, 2:5], data[:, 5:9]

    _r, predicted_stamp, predicted_position, predicted_q = pose_rows('predicted')
    command_arrival, command_stamp, _p, _q = pose_rows('command')
    _r, arm_stamp, arm_position, arm_q = pose_rows('arm')
    console_time, _s, console_position, console_q = pose_rows('console')
    return Streams(predicted_stamp, predicted_position, command_stamp, command_arrival,
                   arm_stamp, arm_position, console_time, console_position, rows['safety'],
                   predicted_q, arm_q, console_q)


def text_lines(result):
    """Two summary lines: e_pred and e_delayed (RMS / p95 / max, mm)."""
    def line(name, figures):
        if not figures['samples']:
            return f'{name} n/a (no samples while the arm could move)'
        angle = '' if figures.get('rms_deg') is None else (
            f"; angle RMS {figures['rms_deg']:.2f} deg, max {figures['max_deg']:.2f} deg")
        return (f"{name} RMS {figures['rms_m'] * 1e3:.2f} mm, p95 "
                f"{figures['p95_m'] * 1e3:.2f} mm, max {figures['max_m'] * 1e3:.2f} mm"
                f"{angle} ({figures['samples']} samples)")
    return [line('prediction     e_pred', result['prediction']),
            line('delayed view   e_delayed', result['delayed_view'])]


def write_plot(result, path, title=''):
    """Plot e_pred and e_delayed over time (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    series = result['series']
    fig, ax = plt.subplots(figsize=(11, 3.8))
    if series['t'].size:
        # Break the lines where samples are missing (HOLD, ESTOP): no line across a gap.
        t = series['t'] - series['t'][0]
        gaps = np.nonzero(np.diff(t) > MAX_GAP)[0] + 1
        t = np.insert(t, gaps, np.nan)
        for key, colour, label in (
                ('e_delayed', 'C1', 'e_delayed: console measured_cp (no ghost)'),
                ('e_pred', 'C0', 'e_pred: predicted_cp (the ghost)')):
            ax.plot(t, np.insert(series[key], gaps, np.nan) * 1e3, lw=0.8, color=colour,
                    label=label)
    ax.set(xlabel='time [s]', ylabel='error vs the arm when the command arrives [mm]',
           title=title or 'prediction error vs delayed view')
    ax.grid(True, alpha=0.3)
    ax.legend(loc='upper right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def demo_figures(mcap_path, arm, out_dir, plot_name='prediction.png'):
    """
    Analyse the demo's recording (its hook); return (report fields, plot file names).

    A recording without predicted_cp (``prediction.enabled: false``) gives empty figures.
    """
    import os
    result = analyse(load_mcap(mcap_path, arm))
    plots = []
    if result['prediction']['samples']:
        write_plot(result, os.path.join(out_dir, plot_name),
                   'ghost (predicted_cp) and delayed view vs the arm when each command arrived')
        plots.append(plot_name)
    return report_fields(result), plots
