"""
telesurgery-bench: the pure statistics, the report, and a smoke run of the smallest suite.

Never asserts a performance figure: only that measurements happen and results are well formed.
"""
import json
import os
import sys
import time

import numpy as np
import pytest

from telesurgery_ros.bench import report, stats
from telesurgery_ros.bench.control_loop import baseline_disturbed
from telesurgery_ros.bench.tracking import state_shares


def test_summarize_percentiles_and_empty():
    s = stats.summarize(np.arange(1, 101), scale=2.0)
    assert s['n'] == 100
    assert s['p50'] == pytest.approx(101.0)
    assert s['max'] == 200.0
    assert stats.summarize([])['n'] == 0


def test_figure_ratio_and_missing_baseline():
    row = stats.figure('relay p50', 0.5, 'ms', 0.2, 'bare hop', '<= 2.5x', True)
    assert row['ratio'] == pytest.approx(2.5)
    assert stats.figure('x', 1.0, 'ms', 0.0)['ratio'] is None
    assert stats.figure('x', float('nan'), 'ms')['value'] is None


def test_a_late_slave_alone_is_no_baseline_for_the_jitter_ratio():
    # a baseline window that already overran as often as the target allows the whole stack
    assert '4.3%' in baseline_disturbed({'overrun_fraction': 0.0428})
    assert baseline_disturbed({'overrun_fraction': 0.0006}) == ''
    assert baseline_disturbed({'overrun_fraction': None}) == ''


def test_period_stats_counts_missed_ticks():
    t = np.arange(0.0, 1.0, 0.001)
    t = np.delete(t, [100, 500])                   # two missed ticks
    out = stats.period_stats(t, 0.001)
    assert out['overrun_fraction'] == pytest.approx(2 / (t.size - 1))
    assert out['rate_hz'] == pytest.approx(t.size / 1.0, rel=0.01)


def test_parse_proc_stat_handles_spaces_in_the_name():
    text = '42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 33 44 20 0 1 0 5 6 7\n'
    assert stats.parse_proc_stat(text) == 333
    assert stats.cpu_seconds(os.getpid()) > 0.0


def test_thread_groups_drop_trailing_numbers():
    assert stats.thread_group('dds.udp.7412') == 'dds.udp'
    assert stats.thread_group('rx-1') == 'rx'
    assert stats.thread_group('slave-control') == 'slave-control'
    assert stats.thread_group('python') == 'python'


def test_thread_cpu_names_a_busy_thread_by_its_os_name():
    import threading
    from telesurgery_ros.core.realtime import name_thread
    stop = threading.Event()

    def spin():
        name_thread('bench-spin-7')
        while not stop.is_set():
            sum(range(1000))

    before = {'me': stats.thread_cpu_seconds(os.getpid())}
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    started = time.monotonic()
    time.sleep(0.5)
    after = {'me': stats.thread_cpu_seconds(os.getpid())}
    wall = time.monotonic() - started
    stop.set()
    thread.join()
    pct = stats.thread_cpu_percent(before, after, wall)['me']
    print(f'busy thread: {pct.get("bench-spin", 0.0):.0f} % of a core over {wall:.2f} s')
    assert pct.get('bench-spin', 0.0) > 10.0        # it shares the GIL with this thread only
    assert stats.thread_cpu_seconds(2 ** 22 + 12345) is None


def test_tracking_errors_from_hold_and_interpolation():
    t = np.array([0.0, 1.0, 2.0])
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    held = stats.hold_positions([0.5, 1.5, -1.0], t, pos)
    assert held[0, 0] == 0.0 and held[1, 0] == 1.0 and np.isnan(held[2, 0])
    mid = stats.interp_positions([0.5, 3.0], t, pos)
    assert mid[0, 0] == pytest.approx(0.5) and np.isnan(mid[1, 0])
    err = stats.tracking_error(np.zeros((2, 3)), np.array([[3.0, 4.0, 0.0], [np.nan] * 3]))
    assert err == {'rms': 5.0, 'max': 5.0, 'n': 1}


def test_state_shares_within_the_window():
    msgs = [{'recv_ns': int(t * 1e9), 'data': d} for t, d in
            ((1.0, 'HOLD: waiting'), (2.0, 'NOMINAL'), (3.0, 'NOMINAL'), (9.0, 'ESTOP: x'))]
    assert state_shares(msgs, (1.5, 5.0)) == {'NOMINAL': 1.0}


def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    from telesurgery_ros.bench import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['latency', '--scale', '50'])
    assert exit_info.value.code == 2
    assert '--scale must be 0.1 to 10' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['report', str(tmp_path)])
    assert exit_info.value.code == 2
    assert 'no suite results' in capsys.readouterr().err


@pytest.mark.ros
def test_latency_quick_run_writes_results_and_report(launcher, tmp_path):
    """The smallest suite configuration end to end, with whatever nodes the tree has."""
    out = tmp_path / 'results'
    proc = launcher.start_argv('bench', [sys.executable, '-m', 'telesurgery_ros.bench',
                                         'latency', '--quick', '--out', str(out)])
    code = proc.wait(240)
    assert code is not None, 'telesurgery-bench latency --quick did not finish in 240 s'
    with open(out / 'latency.json') as handle:
        result = json.load(handle)
    assert result['suite'] == 'latency'
    assert result['config']['quick'] is True
    machine = result['machine']
    assert machine['cores'] >= 1 and machine['python'] and machine['rclpy']
    names = {f['name']: f for f in result['figures']}
    base = names['bare hop p50']
    assert base['unit'] == 'ms' and base['value'] > 0.0      # a hop was measured
    for row in result['figures']:
        assert set(row) >= {'name', 'value', 'baseline', 'ratio', 'target', 'met'}
    table = result['tables'][0]
    assert table['rows'][0][0] == 'bare hop (baseline)' and table['rows'][0][1] > 0
    if 'relay path p50 (2 hops + relay)' in names:           # the relay exists in this tree
        relay = names['relay path p50 (2 hops + relay)']
        assert relay['ratio'] == pytest.approx(relay['value'] / relay['baseline'], rel=1e-6)
        assert relay['met'] in (True, False)
    text = report.markdown_report(str(out))
    assert '## The last full run' in text and '| bare hop p50 |' in text
    assert machine['cpu_model'] in text


def test_the_sink_keeps_every_sample_of_a_burst(ros_context, launcher, tmp_path):
    """
    The bench's sink queues a burst it cannot take as fast as it comes.

    It is an instrument: with the stack's history depth of 10 it overwrote samples whenever
    its executor waited for a core, and the link soak counted them as lost end to end.
    """
    import rclpy
    from harness import publish_burst
    topic, burst = 'bench_burst_test', 400
    output = tmp_path / 'sink'
    sink = launcher.start_argv('sink', [
        sys.executable, '-m', 'telesurgery_ros.bench.echo', 'sink', '--ros-args',
        '-p', f'topics:=[{topic}]', '-p', f'output:={output}'])
    node = rclpy.create_node('burst_source')
    try:
        took = publish_burst(node, topic, burst, ready=lambda: 'recording' in sink.output(),
                             what='the sink to match the burst publisher')
        time.sleep(1.0)
    finally:
        node.destroy_node()
    sink.stop()
    with np.load(str(output) + '.npz') as data:
        stamps = sorted(int(s) % 1_000_000_000 for s in data['stamp_ns0'])
    print(f'{burst} samples published in {took * 1e3:.1f} ms; the sink kept {len(stamps)}')
    assert stamps == list(range(burst))


def test_the_bare_zenoh_hop_delivers_stamped_samples_over_the_links_tls(launcher, tmp_path):
    """The link suite's second baseline: two processes, the links' TLS session, no DDS."""
    from harness import wait_for
    from telesurgery_ros.bench.stack import Recording
    from telesurgery_ros.bench.zenoh_hop import KEY
    from telesurgery_ros.domain import free_port
    from telesurgery_ros.tools import certs
    folder = str(tmp_path / 'certs')
    certs.create(folder, days=1)
    endpoint = f'tls/127.0.0.1:{free_port()}'
    module = [sys.executable, '-m', 'telesurgery_ros.bench.zenoh_hop']
    output = str(tmp_path / 'hop')
    sink = launcher.start_argv('zenoh_sink', [*module, 'sink', endpoint, folder,
                                              '--output', output])
    wait_for(lambda: 'listening on' in sink.output(), 30, what='the sink to listen')
    source = launcher.start_argv('zenoh_source', [*module, 'source', endpoint, folder,
                                                  '--rate', '500'])
    wait_for(lambda: f'first message on {KEY}' in sink.output(), 30, what='a first sample')
    time.sleep(1.0)
    source.stop()
    sink.stop()
    latency = Recording(output).latency(KEY)
    print(f'{len(latency)} samples, p50 {np.median(latency) * 1e3:.3f} ms')
    assert len(latency) > 250                      # ~1 s at 500 Hz, and then some
    assert 0.0 < np.median(latency) < 0.5          # stamped when put, on the shared clock


def test_callback_cost_refuses_bad_arguments_in_one_line_each(capsys):
    from telesurgery_ros.tools import callback_cost
    code = callback_cost.main(['--seconds', '0', '--rate', '5', '--bursts', '1,x'])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    assert lines == ['callback_cost: --seconds 0: allowed 1 to 120',
                     'callback_cost: --rate 5: allowed 10 to 5000',
                     "callback_cost: --bursts '1,x': comma-separated integers 1 to 10"]
