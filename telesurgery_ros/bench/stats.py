"""Pure statistics for the benchmarks (no rclpy): percentiles, periods, CPU, tracking error."""
import math
import os
import re

import numpy as np


def summarize(values, scale=1.0):
    """Return n, mean, p50, p90, p99, max, min of ``values`` times ``scale`` (NaN when empty)."""
    data = np.asarray(values, dtype=float) * scale
    if data.size == 0:
        nan = float('nan')
        return {'n': 0, 'mean': nan, 'p50': nan, 'p90': nan, 'p99': nan, 'max': nan,
                'min': nan}
    return {
        'n': int(data.size),
        'mean': float(np.mean(data)),
        'p50': float(np.percentile(data, 50)),
        'p90': float(np.percentile(data, 90)),
        'p99': float(np.percentile(data, 99)),
        'max': float(np.max(data)),
        'min': float(np.min(data)),
    }


def ratio(value, baseline):
    """``value / baseline``, or None when either is missing or the baseline is not positive."""
    if value is None or baseline is None:
        return None
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline <= 0:
        return None
    return value / baseline


def figure(name, value, unit, baseline=None, baseline_name='', target=None, met=None,
           note=''):
    """
    One row of a results table: a figure beside its baseline, ratio, target and verdict.

    ``target`` is a text (``'<= 2.5x bare hop'``); ``met`` is True, False or None (no target).
    """
    return {
        'name': name, 'value': _clean(value), 'unit': unit, 'baseline': _clean(baseline),
        'baseline_name': baseline_name, 'ratio': _clean(ratio(value, baseline)),
        'target': target, 'met': met, 'note': note,
    }


def moonshot(met):
    """Return the note of a figure that says whether its moonshot target was reached."""
    return 'moonshot met' if met else ''


def _clean(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def period_stats(times_s, nominal_period_s):
    """
    Achieved rate, period jitter (|period - nominal|) p99 and overrun fraction of ticks.

    An overrun is a period longer than 1.5 nominal periods (a missed tick).
    """
    t = np.asarray(times_s, dtype=float)
    if t.size < 3:
        return {'rate_hz': None, 'jitter_p99_ms': None, 'overrun_fraction': None, 'n': 0}
    periods = np.diff(t)
    jitter = np.abs(periods - nominal_period_s)
    return {
        'rate_hz': float((t.size - 1) / (t[-1] - t[0])),
        'jitter_p99_ms': float(np.percentile(jitter, 99) * 1e3),
        'overrun_fraction': float(np.mean(periods > 1.5 * nominal_period_s)),
        'n': int(periods.size),
    }


def parse_proc_stat(text):
    """CPU time (user + system, in clock ticks) from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(')') + 2:].split()
    return int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15)


def cpu_seconds(pid):
    """CPU seconds used so far by process ``pid`` and its reaped children; None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(')') + 2:].split()
    ticks = parse_proc_stat(text) + int(fields[13]) + int(fields[14])
    return ticks / os.sysconf('SC_CLK_TCK')


def thread_group(comm):
    """
    Return the group a thread is counted in: its OS name without a trailing number.

    ``dds.udp.7412`` -> ``dds.udp`` (Fast DDS's receive threads), ``rx-1`` -> ``rx`` (Zenoh's
    runtime). Python threads that set no OS name (the main thread: the executor) keep the
    process's own name, ``python``.
    """
    return re.sub(r'[.\-_]?\d+$', '', comm) or comm


def thread_cpu_seconds(pid):
    """CPU seconds (user + system) used so far by the threads of ``pid``, per thread group."""
    out = {}
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return None
    tick = os.sysconf('SC_CLK_TCK')
    for tid in tids:
        try:
            with open(f'/proc/{pid}/task/{tid}/stat') as handle:
                text = handle.read()
        except OSError:
            continue                       # the thread ended meanwhile
        group = thread_group(text[text.index('(') + 1:text.rindex(')')])
        out[group] = out.get(group, 0.0) + parse_proc_stat(text) / tick
    return out


def thread_cpu_percent(before, after, wall_s):
    """
    Per process and thread group, CPU in percent of one core between two snapshots.

    ``before``/``after``: ``{process: {group: seconds}}``. A thread that ended in the window
    takes its time with it (a group can only be under-counted, never over-counted).
    """
    out = {}
    for name, start in before.items():
        end = after.get(name)
        if start and end and wall_s > 0:
            groups = cpu_percent({group: start.get(group, 0.0) for group in end}, end, wall_s)
            out[name] = {group: max(0.0, pct) for group, pct in groups.items()}
    return out


def cpu_percent(before, after, wall_s):
    """Per-name CPU use in percent of one core between two ``{name: cpu_seconds}`` snapshots."""
    out = {}
    for name, start in before.items():
        end = after.get(name)
        if start is None or end is None or wall_s <= 0:
            out[name] = None
        else:
            out[name] = 100.0 * (end - start) / wall_s
    return out


def interp_positions(t_query, t_known, positions):
    """
    Positions (N x 3) of a piecewise-linear path sampled at ``t_known``, at ``t_query``.

    Queries outside the known span get NaN rows (never extrapolated).
    """
    tq = np.asarray(t_query, dtype=float)
    tk = np.asarray(t_known, dtype=float)
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    out = np.full((tq.size, 3), np.nan)
    if tk.size < 2:
        return out
    order = np.argsort(tk, kind='stable')
    tk, pos = tk[order], pos[order]
    inside = (tq >= tk[0]) & (tq <= tk[-1])
    for axis in range(3):
        out[inside, axis] = np.interp(tq[inside], tk, pos[:, axis])
    return out


def hold_positions(t_query, t_known, positions):
    """Latest known position at or before each query time (zero-order hold); NaN before."""
    tq = np.asarray(t_query, dtype=float)
    tk = np.asarray(t_known, dtype=float)
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    out = np.full((tq.size, 3), np.nan)
    if tk.size == 0:
        return out
    order = np.argsort(tk, kind='stable')
    tk, pos = tk[order], pos[order]
    idx = np.searchsorted(tk, tq, side='right') - 1
    ok = idx >= 0
    out[ok] = pos[idx[ok]]
    return out


def tracking_error(actual, reference):
    """RMS and max Euclidean distance between two N x 3 arrays, ignoring NaN rows (in m)."""
    diff = np.linalg.norm(np.asarray(actual, float) - np.asarray(reference, float), axis=1)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return {'rms': None, 'max': None, 'n': 0}
    return {'rms': float(np.sqrt(np.mean(diff ** 2))), 'max': float(np.max(diff)),
            'n': int(diff.size)}
