"""
A stand-in for a monitoring tool (``ros2 topic echo``, rqt, a recorder), run as a process.

Plain rclpy with the middleware's own transports (shared memory included, as any tool that
is not one of our nodes), subscribed to what such a tool watches on the patient side.
``python test/monitoring_tool.py`` prints ``monitoring`` once subscribed, then the count of
messages received every second.
"""
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros import transport
from telesurgery_ros.core import contract
from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, SAFETY_QOS, STREAM_QOS


def main():
    transport.middleware_default()      # not one of our nodes: the middleware's own set-up
    rclpy.init()
    node = Node('monitoring_tool')
    topics = contract.arm_topics()
    count = [0]

    def seen(_msg):
        count[0] += 1
    for msg_type, topic in ((PoseStamped, topics['measured_cp']),
                            (PoseStamped, topics['setpoint_cp']),
                            (PoseStamped, topics['servo_cp']),
                            (JointState, topics['measured_js']),
                            (WrenchStamped, topics['measured_cf'])):
        node.create_subscription(msg_type, topic, seen, STREAM_QOS)
    node.create_subscription(String, contract.SAFETY_STATE_TOPIC, seen, SAFETY_QOS)
    node.create_subscription(DiagnosticArray, contract.DIAGNOSTICS_TOPIC, seen,
                             DIAGNOSTICS_QOS)
    print('monitoring', flush=True)
    last = time.monotonic()
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                print(f'received {count[0]}', flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
