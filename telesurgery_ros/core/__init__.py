"""Pure logic of the stack: no rclpy here; clocks and random sources are passed in."""
