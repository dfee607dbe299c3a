r"""
Render the patient site in the PyBullet GUI and save a PNG (the README picture).

Run under a virtual display on a headless machine::

    xvfb-run -s '-screen 0 1280x800x24' .venv/bin/python -m telesurgery_ros.tools.screenshot \\
        doc/arm_gui.png

Without a display (no Xvfb), ``--direct`` renders with PyBullet's software renderer instead.
The arm is posed by the same kinematics the slave uses (tool tip 3 cm right of home, jaw open).
"""
import argparse
import sys

import numpy as np

from telesurgery_ros.core import contract
from telesurgery_ros.core.kinematics import matrix_to_quat, PsmKinematics, quat_to_matrix, rot_y
from telesurgery_ros.core.sim import Sim


def pose_arm(sim, offset=(0.025, 0.035, 0.0), tilt=0.35, jaw=0.9):
    kin = PsmKinematics()
    position = np.array(contract.HOME_POSITION) + offset
    rotation = quat_to_matrix(contract.HOME_ORIENTATION) @ rot_y(tilt)
    result = kin.ik(position, matrix_to_quat(rotation))
    joints = np.append(result.joints, jaw)
    sim.reset(joints)
    for _ in range(200):
        sim.command(joints)
        sim.step()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('output', nargs='?', default='doc/arm_gui.png')
    parser.add_argument('--direct', action='store_true',
                        help='no GUI: software renderer (no display needed)')
    parser.add_argument('--width', type=int, default=1100)
    parser.add_argument('--height', type=int, default=720)
    parser.add_argument('--distance', type=float, default=1.05)
    parser.add_argument('--yaw', type=float, default=38.0)
    parser.add_argument('--pitch', type=float, default=-22.0)
    args = parser.parse_args(argv)
    sim = Sim(gui=not args.direct)
    try:
        pose_arm(sim)
        tip = sim.link_pose_world('psm1_tool_tip')[0]
        target = 0.5 * (tip + sim.rcm_position) + np.array([0.0, 0.0, 0.1])
        view = {'distance': args.distance, 'yaw': args.yaw, 'pitch': args.pitch, 'target': target}
        if not args.direct:
            sim.aim_camera(**view)
        image = sim.capture(args.width, args.height, **view)
    finally:
        sim.close()
    from matplotlib import image as mpimg
    mpimg.imsave(args.output, image)
    print(f'saved {args.output} ({args.width}x{args.height})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
