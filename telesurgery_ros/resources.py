"""
Where the package's data files (launch/, config/, urdf/) are, in every kind of install.

Resolution order, the same for every caller:
1. the ament index (``colcon build`` + ``source install/setup.bash``, a non-editable
   ``pip install``, or any prefix on ``AMENT_PREFIX_PATH``): ``<prefix>/share/telesurgery_ros``;
2. the source checkout this module was imported from (the editable install of ``make setup``,
   which installs no data files): the folder holding ``package.xml`` beside the package.
Anything else is an error that says what was looked for.
"""
import os
import sys

PACKAGE = 'telesurgery_ros'
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ament_prefixes():
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    # A virtualenv with the ROS wheels is itself an ament prefix, even when
    # AMENT_PREFIX_PATH is not set.
    prefixes.append(sys.prefix)
    return prefixes


def share_directory(package=PACKAGE):
    """Return the share directory of ``package`` (ours or any ament package)."""
    for prefix in _ament_prefixes():
        marker = os.path.join(prefix, 'share', 'ament_index', 'resource_index', 'packages',
                              package)
        if os.path.isfile(marker):
            return os.path.join(prefix, 'share', package)
    if package == PACKAGE and os.path.isfile(os.path.join(_SOURCE_ROOT, 'package.xml')):
        return _SOURCE_ROOT
    raise FileNotFoundError(
        f"package '{package}' not found: no share/ament_index marker under "
        + os.pathsep.join(_ament_prefixes())
        + ('' if package != PACKAGE else f' and no source checkout at {_SOURCE_ROOT}'))


def data_path(*parts, package=PACKAGE):
    """Return the path of one of the package's data files, e.g. ``urdf/psm.urdf``."""
    path = os.path.join(share_directory(package), *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{package} data file not found: {path}')
    return path
