"""
``telesurgery-bench``: measured performance of the stack, each figure beside a baseline.

Every suite starts real node processes in a private ROS domain, measures, and writes
``<suite>.json`` (with the machine it ran on) and, where useful, PNG plots. Figures are given
as ratios to a baseline measured in the same run, because the machine is shared and noisy.
"""
