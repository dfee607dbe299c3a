"""
The ``telesurgery-bench`` command: run benchmark suites, or print the figures of a run.

``telesurgery-bench SUITE`` runs a benchmark suite; ``telesurgery-bench report DIR`` prints
the figures section of doc/benchmarks.md generated from a results directory.

Suites: latency, relay-accuracy, control-loop, hold-reaction, tracking, scale, safety-soak,
link, prediction, all. ``all`` runs latency, relay-accuracy, control-loop, hold-reaction,
tracking and scale (under 10 minutes on 2 cores). ``--quick`` runs each
measurement for a couple of seconds: for smoke tests, not for figures.
"""
import argparse
import datetime
import importlib
import os
import shlex
import sys
import time
import traceback

from telesurgery_ros import stdout_guard
from telesurgery_ros.bench.machine import machine_info
from telesurgery_ros.bench.report import (
    copy_plots, markdown_report, print_result, TARGET_COLUMNS, target_rows, text_table,
    write_result)
from telesurgery_ros.bench.stack import BenchError, Stack, Unavailable
from telesurgery_ros.domain import isolate

SUITES = {
    'latency': 'telesurgery_ros.bench.latency',
    'relay-accuracy': 'telesurgery_ros.bench.relay_accuracy',
    'control-loop': 'telesurgery_ros.bench.control_loop',
    'hold-reaction': 'telesurgery_ros.bench.hold_reaction',
    'tracking': 'telesurgery_ros.bench.tracking',
    'scale': 'telesurgery_ros.bench.scale',
    'safety-soak': 'telesurgery_ros.bench.safety_soak',
    'link': 'telesurgery_ros.bench.link',
    'prediction': 'telesurgery_ros.bench.prediction',
}
ALL = ('latency', 'relay-accuracy', 'control-loop', 'hold-reaction', 'tracking', 'scale')


class OutputClosed(BaseException):
    """
    Standard output's reader went away (``telesurgery-bench all | head``): stop the run.

    A BaseException, like KeyboardInterrupt, so that no suite's ``except Exception`` takes it
    for a failed measurement and carries on.
    """


class Context:
    """What a suite needs: where to write, how long to measure, how to report progress."""

    def __init__(self, outdir, quick=False, echo=False, scale=1.0, command=''):
        self.outdir = outdir
        self.workdir = os.path.join(outdir, 'logs')
        self.quick = quick
        self.echo = echo
        self.scale = scale
        self.command = command
        self._t0 = time.monotonic()

    def seconds(self, full, quick):
        """Measurement length: ``full`` (times --scale) normally, ``quick`` with --quick."""
        return quick if self.quick else full * self.scale

    def progress(self, message):
        """Print a progress line; raise :class:`OutputClosed` once no one reads them."""
        print(f'[{time.monotonic() - self._t0:6.1f} s] {message}', flush=True)
        if stdout_guard.CLOSED.is_set():
            raise OutputClosed()

    def stack(self, label):
        return Stack(self.workdir, label, echo=self.echo)

    def new_result(self, suite, config):
        return {'suite': suite, 'command': self.command, 'machine': machine_info(),
                'config': dict(config, quick=self.quick), 'figures': [], 'tables': [],
                'plots': [], 'notes': [], 'skipped': []}


def run_suite(name, ctx):
    """Run one suite, print and write its result; return the result (None if it failed)."""
    module = importlib.import_module(SUITES[name])
    ctx.progress(f'suite {name}: start')
    start = time.monotonic()
    try:
        result = module.run(ctx)
    except Unavailable as exc:
        result = ctx.new_result(name, {})
        result['skipped'].append(str(exc))
    except BenchError as exc:
        ctx.progress(f'suite {name}: FAILED: {exc}')
        return None
    result['wall_s'] = round(time.monotonic() - start, 1)
    path = write_result(ctx.outdir, result)
    print_result(result)
    ctx.progress(f'suite {name}: done in {result["wall_s"]:.0f} s -> {path}')
    return result


def _parser():
    parser = argparse.ArgumentParser(
        prog='telesurgery-bench', description=__doc__.strip().split('\n\n')[0])
    parser.add_argument('suite', choices=[*SUITES, 'all', 'report'],
                        help='suite to run, or report to print the figures of doc/benchmarks.md')
    parser.add_argument('results_dir', nargs='?',
                        help='report only: the results directory to read')
    parser.add_argument('--out', help='results directory (default bench_results/<UTC time>)')
    parser.add_argument('--quick', action='store_true',
                        help='a couple of seconds per measurement (smoke test, no figures)')
    parser.add_argument('--scale', type=float, default=1.0,
                        help='multiply every measurement window by this factor (0.1 to 10)')
    parser.add_argument('--echo', action='store_true', help="echo the nodes' output")
    parser.add_argument('--copy-plots', metavar='DIR',
                        help='report only: copy the PNG plots to DIR (e.g. doc/bench)')
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    stdout_guard.guard()
    if args.suite == 'report':
        return sys.exit(_report(args))
    if args.results_dir:
        print('telesurgery-bench: error: a results directory is only taken by report '
              '(use --out DIR to choose where results go)', file=sys.stderr)
        sys.exit(2)
    if not 0.1 <= args.scale <= 10.0:
        print(f'telesurgery-bench: error: --scale must be 0.1 to 10, got {args.scale:g}',
              file=sys.stderr)
        sys.exit(2)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
    outdir = args.out or os.path.join('bench_results', stamp)
    domain = isolate(os.environ)
    command = 'telesurgery-bench ' + ' '.join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    ctx = Context(outdir, quick=args.quick, echo=args.echo, scale=args.scale, command=command)
    names = ALL if args.suite == 'all' else (args.suite,)
    done = []
    try:
        sys.exit(_run(ctx, names, outdir, domain, done))
    except OutputClosed:
        finished = ', '.join(r['suite'] for r in done) or 'none'
        stdout_guard.say_closed('telesurgery-bench', f'stopped, every node it started is '
                                f'stopped; suites finished: {finished} (results in {outdir})')
        sys.exit(stdout_guard.EXIT_CODE)


def _run(ctx, names, outdir, domain, done):
    """Run the suites ``names`` in turn; return the exit code (1 if one failed)."""
    ctx.progress(f'{", ".join(names)} -> {outdir} (ROS_DOMAIN_ID={domain})')
    failed = []
    for name in names:
        try:
            result = run_suite(name, ctx)
            if result is None:
                failed.append(name)
            else:
                done.append(result)
        except KeyboardInterrupt:
            ctx.progress('interrupted')
            return 130
        except Exception:                      # one broken suite must not lose the others
            traceback.print_exc()
            failed.append(name)
    if len(done) > 1 and target_rows(done):
        print('\n== targets of this run\n' + text_table(TARGET_COLUMNS, target_rows(done)))
    ctx.progress(f'finished; results in {outdir}'
                 + (f'; FAILED: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


def _report(args):
    if not args.results_dir:
        print('telesurgery-bench: error: report needs a RESULTS_DIR', file=sys.stderr)
        return 2
    try:
        text = markdown_report(args.results_dir)
    except FileNotFoundError as exc:
        print(f'telesurgery-bench: error: {exc}', file=sys.stderr)
        return 2
    if args.copy_plots:
        copy_plots(args.results_dir, args.copy_plots)
    sys.stdout.write(text)
    return 0
