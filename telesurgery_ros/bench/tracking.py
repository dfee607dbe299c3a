"""
``tracking``: tool-tip tracking error of the scripted suturing motion vs network profile.

Per profile, the whole stack runs with the console's scripted ``suture`` motion. A sink
records the surgeon's intent (``console/psm1/servo_cp``, by its sample stamp), the delayed
command as the slave receives it (``psm1/servo_cp``), the arm (``psm1/measured_cp``) and the
round trip the console sees (``console/psm1/setpoint_cp``: receive - stamp). Position errors:

- vs the delayed command: ``|measured(t) - latest command received by t|``: what the slave's
  controller adds;
- vs the intent: ``|measured(t) - intent(t)|``: what the surgeon sees, network included.

The watchdog's latency, feedback and fault-count limits are relaxed (``BENCH_WATCHDOG``) so
that long links are measured moving instead of holding; the share of time in each safety state
is reported beside the errors, and a profile whose arm could move for less than half of the
window gets no error figures (they would measure a held arm).
"""
import os

import numpy as np

from telesurgery_ros.bench.latency import BENCH_WATCHDOG, full_stack
from telesurgery_ros.bench.measure import measure
from telesurgery_ros.bench.report import fmt
from telesurgery_ros.bench.stack import BenchError, require_nodes
from telesurgery_ros.bench.stats import (
    figure, hold_positions, interp_positions, summarize, tracking_error)
from telesurgery_ros.core.contract import arm_topics, console_topic

PROFILES = ('lan', 'china_5g_1200km', 'rome_beijing_2024', 'starlink', 'geo_satellite')
CONSOLE = {'trajectory.shape': 'suture'}
TOPICS = arm_topics()
INTENT = console_topic(TOPICS['servo_cp'])
COMMAND = TOPICS['servo_cp']
MEASURED = TOPICS['measured_cp']
ROUND_TRIP = console_topic(TOPICS['setpoint_cp'])
MIN_MOTION_SHARE = 0.5
TARGET_LAN_RMS_MM = 0.1                        # issue 13: must not regress past 0.1 mm


def state_shares(safety, window):
    """Share of safety/state messages in ``window`` per state name."""
    start, end = window
    names = [m['data'].split(':')[0].strip() for m in safety
             if start * 1e9 <= m['recv_ns'] <= end * 1e9]
    return {n: names.count(n) / len(names) for n in sorted(set(names))} if names else {}


def analyse(m):
    """Errors (mm), RTT (ms) and state shares of one tracking measurement."""
    intent_recv, intent_stamp, intent_pos = m.stream(INTENT)
    cmd_recv, _cmd_stamp, cmd_pos = m.stream(COMMAND)
    meas_recv, _meas_stamp, meas_pos = m.stream(MEASURED)
    # Origins are subtracted in float64 seconds since the epoch: ~0.2 us resolution, plenty.
    vs_command = tracking_error(meas_pos, hold_positions(meas_recv, cmd_recv, cmd_pos))
    vs_intent = tracking_error(meas_pos, interp_positions(meas_recv, intent_stamp, intent_pos))
    rtt = summarize(m.latency(ROUND_TRIP), 1e3)
    path = np.linalg.norm(np.diff(intent_pos, axis=0), axis=1).sum() if len(intent_pos) else 0
    return {
        'rms_vs_command_mm': _mm(vs_command['rms']), 'max_vs_command_mm': _mm(vs_command['max']),
        'rms_vs_intent_mm': _mm(vs_intent['rms']), 'max_vs_intent_mm': _mm(vs_intent['max']),
        'samples': vs_intent['n'], 'rtt_ms': rtt, 'intent_path_mm': float(path) * 1e3,
        'states': state_shares(m.recording.safety, m.window.span),
    }


def _mm(value):
    return None if value is None else value * 1e3


def plot(rows, path):
    """
    Write a PNG of RMS/max error vs RTT p50, one point per profile.

    Profiles whose arm could move for less than ``MIN_MOTION_SHARE`` of the window are drawn
    hollow and labelled with the share: their errors measure a held arm.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
    rows = sorted((r for r in rows if r['rtt_ms']['p50'] == r['rtt_ms']['p50']),
                  key=lambda r: r['rtt_ms']['p50'])
    series = (('rms_vs_intent_mm', 'RMS vs intent', 'o', '-', 'C0'),
              ('max_vs_intent_mm', 'max vs intent', 'o', '--', 'C1'),
              ('rms_vs_command_mm', 'RMS vs delayed command', 's', '-', 'C2'),
              ('max_vs_command_mm', 'max vs delayed command', 's', '--', 'C3'))
    for key, label, marker, line, color in series:
        valid = [r for r in rows if r['motion_share'] >= MIN_MOTION_SHARE]
        ax.plot([r['rtt_ms']['p50'] for r in valid],
                [np.nan if r[key] is None else r[key] for r in valid],
                marker=marker, linestyle=line, color=color, label=label)
        held = [r for r in rows if r['motion_share'] < MIN_MOTION_SHARE]
        ax.plot([r['rtt_ms']['p50'] for r in held],
                [np.nan if r[key] is None else r[key] for r in held],
                marker=marker, linestyle='none', color=color, markerfacecolor='none')
    for r in rows:
        text = r['profile'] if r['motion_share'] >= MIN_MOTION_SHARE else (
            f"{r['profile']} (moving {r['motion_share']:.0%})")
        ax.annotate(text, (r['rtt_ms']['p50'], r['rms_vs_intent_mm'] or 0.0), fontsize=7,
                    textcoords='offset points', xytext=(4, 4))
    ax.set_xscale('log')
    ax.set_xlim(5.0, 2000.0)
    ax.set_xlabel('round-trip time p50 seen by the console (ms)')
    ax.set_ylabel('tool-tip position error (mm)')
    ax.set_title('Suturing motion: tracking error vs round-trip time\n'
                 '(hollow: arm held for most of the window)', fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8, loc='upper left')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(ctx, profiles=PROFILES):
    require_nodes('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
    seconds = ctx.seconds(15.0, 2.5)
    result = ctx.new_result('tracking', {'profiles': list(profiles), 'window_s': seconds,
                                         'console': CONSOLE, 'watchdog': BENCH_WATCHDOG})
    rows = []
    for profile in profiles:
        ctx.progress(f'profile {profile} for {seconds:g} s')

        def start(stack, profile=profile):
            full_stack(stack, relay_params={'profile': profile}, console_params=CONSOLE)
        try:
            m = measure(ctx, f'tracking-{profile}', start,
                        [INTENT, COMMAND, MEASURED, ROUND_TRIP], seconds, warmup=2.0,
                        sink_options={'safety': True})
        except BenchError as exc:
            result['skipped'].append(f'{profile}: {exc}'.splitlines()[0])
            ctx.progress(f'  {profile} FAILED: {exc}')
            continue
        row = dict(analyse(m), profile=profile)
        moving = row['states'].get('NOMINAL', 0.0) + row['states'].get('DEGRADED', 0.0)
        row['motion_share'] = moving
        rows.append(row)
        shares = ', '.join(f'{k} {v:.0%}' for k, v in row['states'].items())
        if moving < MIN_MOTION_SHARE:
            result['notes'].append(
                f'{profile}: not measured, motion was allowed for only {moving:.0%} of the '
                f'window (safety states: {shares}); see logs/processes.log for the reasons')
        elif moving < 0.95:
            result['notes'].append(
                f'{profile}: motion allowed for {moving:.0%} of the window ({shares}); its '
                'errors include the arm holding')
        ctx.progress(f'  RTT p50 {fmt(row["rtt_ms"]["p50"])} ms, RMS error vs intent '
                     f'{fmt(row["rms_vs_intent_mm"])} mm, vs delayed command '
                     f'{fmt(row["rms_vs_command_mm"])} mm, motion allowed {moving:.0%}')
    if not rows:
        raise BenchError('no profile could be measured')
    valid = [r for r in rows if r['motion_share'] >= MIN_MOTION_SHARE]
    base = valid[0] if valid else rows[0]
    for row in valid:
        lan = row['profile'] == 'lan'
        value = row['rms_vs_intent_mm']
        result['figures'].append(figure(
            f'{row["profile"]}: RMS error vs intent', value, 'mm',
            base['rms_vs_intent_mm'], f'{base["profile"]}',
            f'<= {TARGET_LAN_RMS_MM:g} mm' if lan else None,
            (value is not None and value <= TARGET_LAN_RMS_MM) if lan else None))
    result['tables'].append({
        'title': 'tool-tip position error (mm) and round trip (ms) per profile',
        'columns': ['profile', 'RTT p50', 'RTT p99', 'RMS vs command', 'max vs command',
                    'RMS vs intent', 'max vs intent', 'motion allowed', 'HOLD/ESTOP'],
        'rows': [[r['profile'], r['rtt_ms']['p50'], r['rtt_ms']['p99'],
                  r['rms_vs_command_mm'], r['max_vs_command_mm'], r['rms_vs_intent_mm'],
                  r['max_vs_intent_mm'], r['motion_share'],
                  r['states'].get('HOLD', 0.0) + r['states'].get('ESTOP', 0.0)]
                 for r in rows]})
    result['details'] = {'profiles': rows}
    png = 'tracking_error_vs_rtt.png'
    plot(rows, os.path.join(ctx.outdir, png))
    result['plots'].append(png)
    result['notes'].append(
        'watchdog latency, feedback and fault-count limits relaxed (BENCH_WATCHDOG) so long '
        'links are measured moving; the baseline of each ratio is the first profile measured '
        f"({base['profile']})")
    return result
