"""
Results on disk: one ``<suite>.json`` per suite, printed tables and the README section.

A result is a dict: ``suite``, ``command``, ``machine``, ``config``, ``wall_s``, ``figures``
(rows made by :func:`telesurgery_ros.bench.stats.figure`), ``tables`` (``title``, ``columns``,
``rows``), ``plots`` (file names beside the JSON), ``notes`` and ``skipped``.
"""
import glob
import json
import math
import os
import shutil

SUITE_ORDER = ('latency', 'relay-accuracy', 'control-loop', 'hold-reaction', 'tracking', 'scale',
               'safety-soak', 'link', 'prediction')
TITLES = {
    'latency': 'Latency: what the stack adds on top of the network',
    'relay-accuracy': 'Relay accuracy: configured vs achieved delay',
    'control-loop': 'Control loop: the slave at 1 kHz with the whole stack running',
    'hold-reaction': 'HOLD reaction: the watchdog after the last command',
    'tracking': 'Tracking: tool-tip error vs network profile',
    'scale': 'Scale: 1, 2 and 4 arms in one stack',
    'safety-soak': 'Safety soak: nominal operation under a long-distance profile',
    'prediction': 'Prediction: the console ghost vs the delayed view, per profile',
}


def write_result(outdir, result):
    """Write ``<outdir>/<suite>.json`` and return its path."""
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"{result['suite']}.json")
    with open(path, 'w') as handle:
        json.dump(result, handle, indent=1, default=_json_default)
    return path


def _json_default(value):
    if hasattr(value, 'item'):
        return value.item()
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


def load_results(results_dir):
    """Every suite result in a directory, in suite order."""
    results = {}
    for path in glob.glob(os.path.join(results_dir, '*.json')):
        with open(path) as handle:
            data = json.load(handle)
        if isinstance(data, dict) and 'suite' in data and 'figures' in data:
            results[data['suite']] = data
    order = {name: i for i, name in enumerate(SUITE_ORDER)}
    return [results[k] for k in sorted(results, key=lambda k: order.get(k, len(order)))]


def fmt(value, digits=3):
    """Format a number for a table: 3 significant digits, '-' when missing."""
    if value is None:
        return '-'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return '-'
        if value == 0:
            return '0'
        if abs(value) >= 10 ** digits:
            return f'{value:.0f}'
        return f'{value:.{digits}g}'
    return str(value)


def _verdict(met):
    return {True: 'met', False: 'MISSED', None: ''}[met]


def _ratio_text(ratio):
    return '-' if ratio is None else f'{ratio:.2f}x'


def figure_rows(result):
    """Rows (lists of text) of the figure table of one result."""
    rows = []
    for f in result['figures']:
        unit = f" {f['unit']}" if f['unit'] else ''
        base = ('-' if f['baseline'] is None
                else f"{fmt(f['baseline'])}{unit} ({f['baseline_name']})")
        verdict = _verdict(f['met']) + (f" ({f['note']})" if f.get('note') else '')
        rows.append([f['name'], f'{fmt(f["value"])}{unit}', base, _ratio_text(f['ratio']),
                     f['target'] or '', verdict.strip()])
    return rows


FIGURE_COLUMNS = ['figure', 'value', 'baseline', 'ratio', 'target', 'verdict']


def text_table(columns, rows):
    """Format a fixed-width text table."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(cells[0], widths)),
             '  '.join('-' * w for w in widths)]
    lines += ['  '.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    return '\n'.join(lines)


def markdown_table(columns, rows):
    """Format a GitHub-flavoured markdown table."""
    def esc(cell):
        return str(cell).replace('|', '\\|')
    lines = ['| ' + ' | '.join(esc(c) for c in columns) + ' |',
             '|' + '|'.join('---' for _ in columns) + '|']
    lines += ['| ' + ' | '.join(esc(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def print_result(result, out=print):
    """Print the tables and the summary of one suite."""
    out(f"\n== {result['suite']}: {TITLES.get(result['suite'], '')}")
    for table in result.get('tables', []):
        out(f"\n{table['title']}")
        out(text_table(table['columns'], [[fmt(c) for c in row] for row in table['rows']]))
    if result['figures']:
        out('\nsummary')
        out(text_table(FIGURE_COLUMNS, figure_rows(result)))
    for note in result.get('notes', []):
        out(f'note: {note}')
    for skipped in result.get('skipped', []):
        out(f'skipped: {skipped}')


def machine_line(machine):
    """One line describing the machine of a result."""
    load = machine.get('load_average')
    load_text = f', load {load[0]:.2f}' if load else ''
    return (f"{machine.get('cores')} cores ({machine.get('cpu_model')}){load_text}, "
            f"Python {machine.get('python')}, rclpy {machine.get('rclpy')}, "
            f"{machine.get('rmw_implementation')} {machine.get('rmw_fastrtps_cpp')}, "
            f"pybullet {machine.get('pybullet')}")


def markdown_report(results_dir, plots_prefix='bench'):
    """
    Generate the figures section of ``doc/benchmarks.md`` from the results in ``results_dir``.

    ``plots_prefix`` is the plots' folder relative to that page (``--copy-plots doc/bench``).
    """
    results = load_results(results_dir)
    if not results:
        raise FileNotFoundError(f'no suite results (*.json) in {results_dir}')
    folder = os.path.basename(os.path.normpath(results_dir))
    lines = ['## The last full run', '',
             'Every figure below comes from one `telesurgery-bench` run and stands beside a '
             'baseline measured in the same run (the machine is shared and noisy, so the '
             'ratios are the portable part). Reproduce with `make bench` (results under '
             '`bench_results/`, one folder per run), then `telesurgery-bench report` of that '
             f'folder; this one was `bench_results/{folder}`.', '']
    lines += [
        'How it is measured: every process is a real node (or a small bench source/sink '
        'process) in a private ROS domain; one-way latencies are `receive - header.stamp` on '
        "the machine's shared system clock; CPU is `utime + stime` from `/proc/<pid>/stat` "
        "over the window; the slave's loop figures come from its own `/diagnostics` status. "
        'Suites:', '',
        '- `latency`: bare rclpy hop between two processes (baseline) vs the same 1 kHz '
        'stream through the relay with profile `none`, and console sample -> command '
        'applied in the slave (`setpoint_cp`, whose stamp echoes the console sample).',
        '- `relay-accuracy`: constant delays of 10, 70 and 300 ms (`forward.delay` '
        'override, no jitter, no loss) at 500 Hz and 1 kHz; error = achieved - configured - '
        'zero-impairment p50 of the same rate.',
        '- `control-loop`: the slave alone (baseline) vs all four nodes at their default '
        'rates with `rome_beijing_2024` and an MCAP recorder; CPU of the four nodes per arm.',
        '- `hold-reaction`: commands stop 25 times; first HOLD - last command, against the '
        "watchdog's `commands.timeout`.",
        '- `tracking`: scripted suture motion per profile; error of the arm vs the command '
        "it received and vs the surgeon's intent at the same instant.",
        '- `scale`: 1, 2 and 4 whole stacks, each in its own namespace `/armN`; every '
        "arm's loop rate and overrun fraction from its own diagnostics.", '']
    first = results[0]
    lines += [f"Measured on {machine_line(first['machine'])}; "
              f"{first['machine'].get('utc', '')}.", '']
    loads = [r['machine']['load_average'][0] for r in results
             if r['machine'].get('load_average')]
    cores = first['machine'].get('cores') or 1
    if loads and max(loads) > cores:
        lines += [f'**The load average reached {max(loads):.1f} at the start of a suite** '
                  f'({min(loads):.1f} to {max(loads):.1f}, on {cores} cores; the 1-minute '
                  "average also counts the bench's own previous suite): a suite that started "
                  'above the core count may have measured CPU contention as well as the '
                  'stack (the load column below). The ratios to the same-run baselines are '
                  'the part to compare across machines.', '']
    lines += targets_section(results)
    for result in results:
        load = result['machine'].get('load_average')
        load_text = f', load average {load[0]:.1f} at start' if load else ''
        lines += [f"### {TITLES.get(result['suite'], result['suite'])}", '',
                  f"`{result.get('command', 'telesurgery-bench ' + result['suite'])}`"
                  f" ({fmt(result.get('wall_s'))} s{load_text})", '']
        if result['figures']:
            lines += [markdown_table(FIGURE_COLUMNS, figure_rows(result)), '']
        for table in result.get('tables', []):
            lines += [f"{table['title']}:", '',
                      markdown_table(table['columns'],
                                     [[fmt(c) for c in row] for row in table['rows']]), '']
        for plot in result.get('plots', []):
            lines += [f'![{result["suite"]}]({plots_prefix}/{plot})', '']
        for note in result.get('notes', []):
            lines += [f'- {note}']
        for skipped in result.get('skipped', []):
            lines += [f'- not measured: {skipped}']
        if result.get('notes') or result.get('skipped'):
            lines.append('')
    return '\n'.join(lines).rstrip() + '\n'


def target_rows(results):
    """Every figure with a target, across suites: suite, figure, value, baseline, verdict."""
    rows = []
    for result in results:
        load = result['machine'].get('load_average')
        for row, f in zip(figure_rows(result), result['figures']):
            if f['target']:
                rows.append([result['suite'], row[0], row[1], row[2], row[4], row[5],
                             fmt(load[0]) if load else '-'])
    return rows


TARGET_COLUMNS = ['suite', 'figure', 'value', 'baseline', 'target', 'verdict', 'load']


def targets_section(results):
    """Return the lines of the 'targets at a glance' table of the performance section."""
    rows = target_rows(results)
    if not rows:
        return []
    return ['### Targets at a glance', '',
            'Every figure with a target, from the suites below (load: the load average at '
            'the start of the suite).', '', markdown_table(TARGET_COLUMNS, rows), '']


def copy_plots(results_dir, dest):
    """Copy the PNG plots of a results directory to ``dest``; return the copied names."""
    os.makedirs(dest, exist_ok=True)
    names = []
    for path in sorted(glob.glob(os.path.join(results_dir, '*.png'))):
        shutil.copy(path, dest)
        names.append(os.path.basename(path))
    return names
