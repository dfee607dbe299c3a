"""
Thin rclpy adapters, one module per executable.

Started as a program (``python -m telesurgery_ros.nodes.<node>``, or the ``<node>``
executable of ``ros2 run`` and launch files), a node takes a second or so to import rclpy,
numpy and PyBullet before ``run_node`` installs its own SIGINT handler. A launch stopped
within that time would otherwise end every node with a ``KeyboardInterrupt`` traceback from
the middle of an import. Until then SIGINT keeps its default action: the node ends at once,
as killed by SIGINT (which a launch counts as a clean stop), having created nothing that needs
cleaning up. Imported as a library (the tests), nothing changes.
"""
import os
import signal
import sys

_EXECUTABLES = {'master_console', 'network_relay', 'slave_controller', 'safety_watchdog',
                'arm_viewer', 'site_link'}

# While ``python -m`` imports the parent packages of the module it runs, sys.argv[0] is '-m'.
if sys.argv and (sys.argv[0] == '-m' or os.path.basename(sys.argv[0]) in _EXECUTABLES):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
