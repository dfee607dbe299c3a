"""
A bare Zenoh hop between two bench processes, set up as the two site links set up theirs.

``python -m telesurgery_ros.bench.zenoh_hop {source|sink} ENDPOINT CERTS [--rate HZ]
[--output PREFIX]``

The sink takes the patient site's side: it listens on ``ENDPOINT`` with the patient
certificate of ``CERTS``. The source takes the surgeon's: it connects with the surgeon
certificate and puts on the link's key of ``psm1/servo_cp`` with the link's command QoS
(:func:`telesurgery_ros.core.link_tls.publisher_qos`). The session configuration is the links'
own (:func:`telesurgery_ros.core.link_tls.zenoh_config`): mutual TLS, access control, queues.
Each sample is a ``PoseStamped`` in CDR with the link's attachment, as on the link, stamped
with the system clock as it is put. The sink records receive time and stamp, and on SIGINT
writes them as the bench's DDS sink does (:func:`telesurgery_ros.bench.echo.write_samples`).

The ``link`` suite adds this hop to two bare DDS hops of the same run: the least that the
path through both links can take, since that path is those three hops plus the links' work.
"""
import argparse
import json
import signal
import sys
import threading
import time

from telesurgery_ros.core import contract, link, link_tls
from telesurgery_ros.core.cdr import decode_stamp, PoseStampedEncoder

ARM = contract.DEFAULT_ARM
KEY = link.key_for(link.DEFAULT_NAMESPACE, contract.arm_topics(ARM)['servo_cp'])
LEASE = 1.0                          # s, as site_link's default


def _session(zenoh, role, endpoint, certs):
    ca, cert, key = link_tls.credential_paths(role, certs)
    credentials = link_tls.load_credentials(role, ca, cert, key)
    settings = link_tls.zenoh_config(role, link_tls.parse_endpoint(endpoint), credentials,
                                     link.DEFAULT_NAMESPACE, ARM, LEASE)
    return zenoh.open(zenoh.Config.from_json5(json.dumps(settings)))


def run_source(zenoh, endpoint, certs, rate, stop):
    """Put stamped poses at ``rate`` Hz on absolute deadlines until ``stop`` is set."""
    session = _session(zenoh, 'surgeon', endpoint, certs)
    publisher = session.declare_publisher(KEY, **link_tls.publisher_qos(zenoh, link.COMMAND))
    encoder = PoseStampedEncoder(contract.frames(ARM)['rcm'])   # as the console's commands
    sequencer = link.Sequencer(link.new_session_id())
    period = 1.0 / rate
    sent = 0
    print(f'putting on {KEY} at {rate:g} Hz', flush=True)
    deadline = time.monotonic()
    while not stop.is_set():
        deadline += period
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        data = encoder.encode(time.time_ns(), contract.HOME_POSITION, contract.HOME_ORIENTATION)
        publisher.put(data, attachment=sequencer.attachment(KEY))
        sent += 1
    print(f'sent {sent} samples', flush=True)
    session.close()


def run_sink(zenoh, endpoint, certs, output, stop):
    """Record (receive ns, stamp ns) of every sample until ``stop``; then write them."""
    session = _session(zenoh, 'patient', endpoint, certs)
    rows = []

    def on_sample(sample):
        now = time.time_ns()
        if not rows:
            print(f'first message on {KEY}', flush=True)
        rows.append((now, decode_stamp(sample.payload.to_bytes())[0], 0.0, 0.0, 0.0))

    subscriber = session.declare_subscriber(KEY, on_sample,
                                            allowed_origin=zenoh.Locality.REMOTE)
    print(f'listening on {endpoint} for {KEY}', flush=True)
    stop.wait()
    subscriber.undeclare()
    session.close()
    print(f'received {len(rows)} samples', flush=True)
    if output:
        from telesurgery_ros.bench.echo import write_samples
        write_samples(output, [KEY], {KEY: rows})


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m telesurgery_ros.bench.zenoh_hop',
                                     description=__doc__.strip().split('\n\n')[0])
    parser.add_argument('role', choices=('source', 'sink'))
    parser.add_argument('endpoint', help='tls/HOST:PORT (the sink listens, the source connects)')
    parser.add_argument('certs', help='folder of telesurgery-certs')
    parser.add_argument('--rate', type=float, default=500.0, help='source: samples per second')
    parser.add_argument('--output', default='', help='sink: results prefix (.npz, .json)')
    args = parser.parse_args(argv)
    if not 1.0 <= args.rate <= 10000.0:
        parser.error(f'--rate must be 1 to 10000 Hz, got {args.rate:g}')
    try:
        link_tls.parse_endpoint(args.endpoint)
    except ValueError as exc:
        parser.error(f'endpoint: {exc}')
    import zenoh
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        if args.role == 'source':
            run_source(zenoh, args.endpoint, args.certs, args.rate, stop)
        else:
            run_sink(zenoh, args.endpoint, args.certs, args.output, stop)
    except (link_tls.CredentialError, zenoh.ZError) as exc:
        print(f'zenoh_hop {args.role}: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
