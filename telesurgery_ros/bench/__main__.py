"""``python -m telesurgery_ros.bench`` is ``telesurgery-bench``."""
from telesurgery_ros.bench.cli import main

main()
