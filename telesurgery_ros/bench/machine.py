"""The machine a result was measured on: cores, CPU, load, Python and ROS versions."""
import datetime
import importlib.metadata
import os
import platform
import socket


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info():
    """Return a JSON-ready description of this machine and software versions."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        'hostname': socket.gethostname(),
        'cores': os.cpu_count(),
        'usable_cores': usable,
        'cpu_model': _cpu_model(),
        'load_average': list(load) if load else None,
        'kernel': platform.release(),
        'python': platform.python_version(),
        'rclpy': _version('ros-rclpy'),
        'rmw_implementation': os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'),
        'rmw_fastrtps_cpp': _version('ros-rmw-fastrtps-cpp'),
        'fastdds': _version('ros-fastdds'),
        'pybullet': _version('pybullet'),
        'numpy': _version('numpy'),
        'ros_domain_id': os.environ.get('ROS_DOMAIN_ID'),
        'ros_distro': os.environ.get('ROS_DISTRO'),
        'utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
