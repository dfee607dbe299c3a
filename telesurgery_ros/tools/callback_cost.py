r"""
What one received message costs a Python node: CPU per message of an rclpy subscriber.

The floor under every node's CPU. A publisher process sends serialized ``PoseStamped`` bytes
at ``--rate`` (in bursts of ``--burst`` messages on as many topics, as the slave's feedback
arrives); a receiver process takes them with an empty raw callback, spun three ways:
``events``, as the nodes spin (``run_node``: the EventsExecutor in 0.1 s slices of
``spin_until_future_complete``); ``events-once``, the EventsExecutor one ``spin_once`` per
event (the nodes' loop until 2026-12-03); ``single``, the SingleThreadedExecutor's
``spin_once``. Both use the nodes' UDP-only transport, in a private ROS domain. The
receiver's CPU (``process_time``) over ``--seconds`` divided by the messages it took::

    .venv/bin/python -m telesurgery_ros.tools.callback_cost --seconds 8

Exit code 0 when every receiver heard messages, 1 otherwise; ``--json FILE`` keeps the table.
"""
import argparse
import json
import os
import sys
import time

EXECUTORS = ('events', 'events-once', 'single')


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=8.0,
                        help='measurement window per case (default 8 s, 1 to 120)')
    parser.add_argument('--rate', type=float, default=1000.0,
                        help='messages per second in all (default 1000, 10 to 5000)')
    parser.add_argument('--bursts', default='1,4',
                        help='comma-separated burst sizes to measure (default 1,4; 1 to 10)')
    parser.add_argument('--json', metavar='FILE', help='also write the figures as JSON')
    parser.add_argument('--role', choices=('pub', 'sub'), help=argparse.SUPPRESS)
    parser.add_argument('--executor', choices=EXECUTORS, default='events',
                        help=argparse.SUPPRESS)
    parser.add_argument('--burst', type=int, default=1, help=argparse.SUPPRESS)
    return parser


def check(args):
    """Return the one-line problems of the arguments (empty when they are fine)."""
    problems = []
    if not 1.0 <= args.seconds <= 120.0:
        problems.append(f'--seconds {args.seconds:g}: allowed 1 to 120')
    if not 10.0 <= args.rate <= 5000.0:
        problems.append(f'--rate {args.rate:g}: allowed 10 to 5000')
    try:
        bursts = [int(b) for b in args.bursts.split(',')]
    except ValueError:
        bursts = []
    if not bursts or not all(1 <= b <= 10 for b in bursts):
        problems.append(f"--bursts '{args.bursts}': comma-separated integers 1 to 10")
    return problems, bursts


def _node(name):
    from telesurgery_ros import transport
    transport.configure()
    import rclpy
    rclpy.init(args=[])
    return rclpy, rclpy.create_node(name)


def publish(args):
    """Send bursts of ``args.burst`` messages until killed or the window ends (publisher)."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import serialize_message
    from telesurgery_ros.rosutil import STREAM_QOS
    rclpy, node = _node('callback_cost_pub')
    pubs = [node.create_publisher(PoseStamped, f'callback_cost/t{i}', STREAM_QOS)
            for i in range(args.burst)]
    data = serialize_message(PoseStamped())
    period = args.burst / args.rate
    deadline = time.monotonic()
    end = deadline + args.seconds + 10.0
    while deadline < end:
        deadline += period
        for pub in pubs:
            pub.publish(data)
        wait = deadline - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    node.destroy_node()
    rclpy.try_shutdown()


def receive(args):
    """Take the messages with an empty raw callback; print one JSON line (receiver)."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.task import Future
    from telesurgery_ros.rosutil import spin_slice, STREAM_QOS
    rclpy, node = _node('callback_cost_sub')
    count = [0]

    def callback(_data):
        count[0] += 1
    for i in range(args.burst):
        node.create_subscription(PoseStamped, f'callback_cost/t{i}', callback, STREAM_QOS,
                                 raw=True)
    if args.executor.startswith('events'):
        from rclpy.experimental import EventsExecutor
        exe = EventsExecutor()
    else:
        exe = rclpy.executors.SingleThreadedExecutor()
    exe.add_node(node)
    never = Future()

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            spin_slice(exe, never, events=args.executor == 'events')
    spin_for(4.0)                       # discovery and warm-up
    cpu, wall, heard = time.process_time(), time.monotonic(), count[0]
    spin_for(args.seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    heard = count[0] - heard
    print(json.dumps({'executor': args.executor, 'burst': args.burst,
                      'messages_per_s': heard / wall, 'cpu_percent': 100.0 * cpu / wall,
                      'cpu_us_per_message': 1e6 * cpu / heard if heard else None}))
    sys.stdout.flush()
    node.destroy_node()
    rclpy.try_shutdown()


def measure(args, executor, burst):
    """Run one publisher and one receiver; return the receiver's figures (None: nothing)."""
    from telesurgery_ros.procman import ManagedProcess
    common = [sys.executable, '-m', 'telesurgery_ros.tools.callback_cost',
              '--seconds', str(args.seconds), '--rate', str(args.rate), '--burst', str(burst)]
    pub = ManagedProcess('pub', common + ['--role', 'pub'], sink=None).start()
    sub = ManagedProcess('sub', common + ['--role', 'sub', '--executor', executor],
                         sink=None).start()
    try:
        sub.wait(args.seconds + 60.0)
    finally:
        sub.stop()
        pub.stop()
    for line in sub.output().splitlines():
        if line.startswith('{'):
            return json.loads(line)
    return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.role == 'pub':
        return publish(args)
    if args.role == 'sub':
        return receive(args)
    problems, bursts = check(args)
    if problems:
        for line in problems:
            print(f'callback_cost: {line}', file=sys.stderr)
        return 2
    from telesurgery_ros.domain import claim_domain
    os.environ['ROS_DOMAIN_ID'] = str(claim_domain())
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    rows, ok = [], True
    print(f'{"executor":<11} {"burst":>5} {"msg/s":>8} {"CPU %":>7} {"us/msg":>7}')
    for executor in EXECUTORS:
        for burst in bursts:
            row = measure(args, executor, burst)
            if row is None or not row['messages_per_s']:
                ok = False
                print(f'{executor:<11} {burst:>5} no messages heard')
                continue
            rows.append(row)
            print(f"{executor:<11} {burst:>5} {row['messages_per_s']:>8.0f} "
                  f"{row['cpu_percent']:>7.1f} {row['cpu_us_per_message']:>7.0f}")
    print(f'load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'rate': args.rate, 'seconds': args.seconds, 'rows': rows}, f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
