"""telesurgery_ros: ROS 2 teleoperation of a simulated surgical arm over an emulated network."""

__version__ = '0.1.0'
