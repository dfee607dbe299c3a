"""
A private ROS_DOMAIN_ID per run, so concurrent runs on one machine never meet.

(And :func:`free_port`, a free loopback TCP port for a run's own Zenoh link.)

A domain is claimed by an exclusive ``flock`` on ``/tmp/telesurgery_ros_domains/<id>.lock``;
the lock lasts as long as the returned file stays open (normally the life of the process), and
the kernel releases it when the process dies, however it dies. Tests and benchmarks both use it.
"""
import fcntl
import os
import random
import socket

LOCK_DIR = '/tmp/telesurgery_ros_domains'
_held = []


def claim_domain(low=1, high=100, lock_dir=LOCK_DIR, rng=random):
    """Lock a free domain id in ``low..high`` for this process and return it."""
    os.makedirs(lock_dir, exist_ok=True)
    candidates = list(range(low, high + 1))
    rng.shuffle(candidates)
    for domain in candidates:
        handle = open(os.path.join(lock_dir, f'{domain}.lock'), 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return domain
    raise RuntimeError(f'no free ROS_DOMAIN_ID in {low}..{high} (all locked in {lock_dir})')


def release_domain(domain, lock_dir=LOCK_DIR):
    """Give back a domain this process claimed (no-op when it holds no lock on it)."""
    path = os.path.join(lock_dir, f'{domain}.lock')
    for handle in [h for h in _held if h.name == path]:
        _held.remove(handle)
        handle.close()


def isolated_environment(domain, environ=os.environ):
    """Return a copy of ``environ`` for processes on ``domain``, localhost discovery only."""
    env = dict(environ)
    env['ROS_DOMAIN_ID'] = str(domain)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_STATIC_PEERS', None)
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def isolate(environ=os.environ):
    """
    Claim a domain and set up ``environ`` for localhost-only discovery; return the id.

    Call it before anything initialises rclpy; child processes inherit the environment. The
    DDS transport of this process (and of the children) is made UDP-only like the nodes'
    (:func:`telesurgery_ros.transport.configure`).
    """
    from telesurgery_ros import transport
    domain = claim_domain()
    settings = isolated_environment(domain, environ)
    environ.pop('ROS_STATIC_PEERS', None)
    environ.update(settings)
    transport.configure(environ)
    return domain


def free_port(host='127.0.0.1'):
    """Return a TCP port on ``host`` that is free now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
