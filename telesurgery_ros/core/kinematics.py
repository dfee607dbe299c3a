"""
Kinematics of the PSM-like arm (``urdf/psm.urdf``): forward and closed-form inverse.

All poses are the tool tip in the ``psm1_rcm`` frame (see :mod:`telesurgery_ros.core.contract`:
origin at the remote centre of motion, axes parallel to ``world``, quaternions x, y, z, w).

The chain, with every axis of the first three joints through the RCM::

    R_shaft = Rx(outer_yaw) . Ry(outer_pitch) . Rx(pi)        shaft frame, z along the shaft
    wrist   = outer_insertion * R_shaft[:, 2]                 wrist centre (pitch/yaw axes meet)
    R_tip   = R_shaft . Rz(outer_roll) . Rx(wrist_pitch) . Ry(wrist_yaw)
    tip     = wrist + TIP_OFFSET * R_tip[:, 2]

The wrist pitch and yaw axes intersect at the wrist centre, ``TIP_OFFSET`` behind the tip, so
the inverse is closed form: wrist centre from the goal, shaft direction and insertion from the
wrist centre, then the wrist angles as a Z-X-Y Euler decomposition. An unreachable goal gives
the pose of the joints clamped to their limits (the nearest reachable pose in each joint's
coordinate) and a reason; the solver never returns NaN and never raises on numeric input.
"""
from dataclasses import dataclass
import math

import numpy as np

JOINT_NAMES = ('outer_yaw', 'outer_pitch', 'outer_insertion', 'outer_roll',
               'outer_wrist_pitch', 'outer_wrist_yaw')
JAW_NAME = 'jaw'
# Limits as the real PSM (SurRoL): yaw +-91 deg, pitch +-53 deg, insertion 0-0.24 m,
# roll +-260 deg, wrist +-80 deg, jaw -20...80 deg.
LOWER = np.array([math.radians(-91), math.radians(-53), 0.0, math.radians(-260),
                  math.radians(-80), math.radians(-80)])
UPPER = np.array([math.radians(91), math.radians(53), 0.24, math.radians(260),
                  math.radians(80), math.radians(80)])
JAW_LOWER = math.radians(-20)
JAW_UPPER = math.radians(80)
# Joint velocity (rad/s, m/s) and acceleration (rad/s^2, m/s^2) limits; the URDF carries the
# same velocity limits. The last entry is the jaw.
VELOCITY_LIMITS = np.array([2.5, 2.5, 0.3, 4.0, 4.0, 4.0, 4.0])
ACCELERATION_LIMITS = np.array([20.0, 20.0, 2.0, 40.0, 40.0, 40.0, 40.0])

TIP_OFFSET = 0.01          # m, wrist centre (pitch/yaw axes) to tool tip
_SINGULAR = 1e-9           # m, wrist centre this close to the RCM: shaft direction undefined

IK_REASONS = ('non_finite', 'yaw_limit', 'pitch_limit', 'insertion_limit', 'roll_limit',
              'wrist_pitch_limit', 'wrist_yaw_limit')


def rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_FLIP = np.diag([1.0, -1.0, -1.0])     # Rx(pi)


def _shaft(yaw, pitch):
    """Rx(yaw) . Ry(pitch) . Rx(pi) as nested tuples (rows)."""
    sa, ca = math.sin(yaw), math.cos(yaw)
    sb, cb = math.sin(pitch), math.cos(pitch)
    return ((cb, 0.0, -sb), (sa * sb, -ca, sa * cb), (-ca * sb, -sa, -ca * cb))


def _wrist(roll, pitch, yaw):
    """Rz(roll) . Rx(pitch) . Ry(yaw) as nested tuples (rows)."""
    sa, ca = math.sin(roll), math.cos(roll)
    sb, cb = math.sin(pitch), math.cos(pitch)
    sc, cc = math.sin(yaw), math.cos(yaw)
    m1 = (sb * sc, cb, -sb * cc)
    return ((ca * cc - sa * m1[0], -sa * cb, ca * sc - sa * m1[2]),
            (sa * cc + ca * m1[0], ca * cb, sa * sc + ca * m1[2]),
            (-cb * sc, sb, cb * cc))


def _mul(a, b):
    """3x3 product of nested tuples (plain floats: much cheaper than numpy at this size)."""
    (a0, a1, a2), (a3, a4, a5), (a6, a7, a8) = a
    (b0, b1, b2), (b3, b4, b5), (b6, b7, b8) = b
    return ((a0 * b0 + a1 * b3 + a2 * b6, a0 * b1 + a1 * b4 + a2 * b7,
             a0 * b2 + a1 * b5 + a2 * b8),
            (a3 * b0 + a4 * b3 + a5 * b6, a3 * b1 + a4 * b4 + a5 * b7,
             a3 * b2 + a4 * b5 + a5 * b8),
            (a6 * b0 + a7 * b3 + a8 * b6, a6 * b1 + a7 * b4 + a8 * b7,
             a6 * b2 + a7 * b5 + a8 * b8))


def _quat_rows(x, y, z, w):
    """Return the rotation matrix rows (nested tuples) of a unit quaternion."""
    return ((1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)),
            (2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)),
            (2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)))


def quat_to_matrix(q):
    """Convert a quaternion (x, y, z, w; normalised first) to a 3x3 rotation matrix."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    return np.array(_quat_rows(x / n, y / n, z / n, w / n))


def matrix_to_quat(m):
    """3x3 rotation matrix -> unit quaternion (x, y, z, w) with w >= 0."""
    m = np.asarray(m, float).tolist() if isinstance(m, np.ndarray) else m
    t = m[0][0] + m[1][1] + m[2][2]
    if t > 0.0:
        s = 2.0 * math.sqrt(t + 1.0)
        q = [(m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s, s / 4]
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = 2.0 * math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2])
        q = [s / 4, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s, (m[2][1] - m[1][2]) / s]
    elif m[1][1] > m[2][2]:
        s = 2.0 * math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2])
        q = [(m[0][1] + m[1][0]) / s, s / 4, (m[1][2] + m[2][1]) / s, (m[0][2] - m[2][0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1])
        q = [(m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, s / 4, (m[1][0] - m[0][1]) / s]
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    if q[3] < 0:
        n = -n
    return np.array([q[0] / n, q[1] / n, q[2] / n, q[3] / n])


def rotation_angle(r_a, r_b):
    """Angle (rad) of the rotation between two rotation matrices."""
    c = (np.trace(np.asarray(r_a).T @ np.asarray(r_b)) - 1.0) / 2.0
    return math.acos(min(1.0, max(-1.0, c)))


@dataclass(frozen=True)
class IkResult:
    """
    Inverse kinematics answer: always finite joints within limits.

    ``position``/``quaternion`` are the pose those joints reach (equal to the goal when
    ``reachable``); ``reason`` lists the limits that clamped the goal, comma-separated.
    """

    joints: np.ndarray
    position: np.ndarray
    quaternion: np.ndarray
    reachable: bool
    reason: str = ''


class PsmKinematics:
    """Forward and inverse kinematics of the RCM chain, with the joint limits."""

    def __init__(self, tip_offset=TIP_OFFSET, lower=LOWER, upper=UPPER):
        self.tip_offset = float(tip_offset)
        self.lower = np.array(lower, float)
        self.upper = np.array(upper, float)
        self._lower = self.lower.tolist()
        self._upper = self.upper.tolist()

    @staticmethod
    def shaft_rotation(yaw, pitch):
        """Orientation of the shaft frame (z along the shaft, into the patient)."""
        return rot_x(yaw) @ rot_y(pitch) @ _FLIP

    def _fk_rows(self, q):
        shaft = _shaft(q[0], q[1])
        tip = _mul(shaft, _wrist(q[3], q[4], q[5]))
        ins, off = q[2], self.tip_offset
        position = (ins * shaft[0][2] + off * tip[0][2], ins * shaft[1][2] + off * tip[1][2],
                    ins * shaft[2][2] + off * tip[2][2])
        return position, tip

    def fk(self, q):
        """Joints (6) -> (tip position[3], tip rotation 3x3) in the RCM frame."""
        position, rotation = self._fk_rows([float(v) for v in q[:6]])
        return np.array(position), np.array(rotation)

    def fk_pose(self, q):
        """Joints (6) -> (tip position[3], quaternion[4] x, y, z, w) in the RCM frame."""
        position, rotation = self._fk_rows([float(v) for v in q[:6]])
        return np.array(position), matrix_to_quat(rotation)

    def wrist_centre(self, q):
        """Joints -> the wrist centre (where the wrist pitch and yaw axes meet)."""
        return q[2] * self.shaft_rotation(q[0], q[1])[:, 2]

    def home_joints(self, position, quaternion):
        """Joints of a reachable pose (raise ValueError if it is not reachable)."""
        result = self.ik(position, quaternion)
        if not result.reachable:
            raise ValueError(f'pose {position} is not reachable: {result.reason}')
        return result.joints

    def ik(self, position, quaternion, reference=None):
        """
        Tip pose in the RCM frame -> joints; never raises on numbers, never returns NaN.

        ``reference`` (6 joints, default zero) picks the roll branch (roll spans more than a
        turn) and is returned unchanged for a non-finite goal.
        """
        lower, upper = self._lower, self._upper
        ref = [0.0] * 6 if reference is None else [float(v) for v in reference[:6]]
        if len(ref) != 6 or not all(math.isfinite(v) for v in ref):
            ref = [0.0] * 6
        ref = [min(hi, max(lo, v)) for v, lo, hi in zip(ref, lower, upper)]
        try:
            px, py, pz = (float(v) for v in position)
            x, y, z, w = (float(v) for v in quaternion)
            norm = math.sqrt(x * x + y * y + z * z + w * w)
            finite = all(math.isfinite(v) for v in (px, py, pz, norm)) and norm > 1e-6
        except (TypeError, ValueError):
            finite = False
        if not finite:
            pos, quat = self.fk_pose(ref)
            return IkResult(np.array(ref), pos, quat, False, 'non_finite')
        rot = _quat_rows(x / norm, y / norm, z / norm, w / norm)
        off = self.tip_offset
        wx, wy, wz = px - off * rot[0][2], py - off * rot[1][2], pz - off * rot[2][2]
        insertion = math.sqrt(wx * wx + wy * wy + wz * wz)
        if insertion > _SINGULAR:
            dx, dy, dz = wx / insertion, wy / insertion, wz / insertion
        else:
            dx, dy, dz = rot[0][2], rot[1][2], rot[2][2]
        # direction = (-sin(pitch), sin(yaw) cos(pitch), -cos(yaw) cos(pitch))
        q = [math.atan2(dy, -dz), math.asin(min(1.0, max(-1.0, -dx))), insertion,
             0.0, 0.0, 0.0]
        hit = []
        for i in range(3):
            clamped = min(upper[i], max(lower[i], q[i]))
            if clamped != q[i]:
                hit.append(i)
                q[i] = clamped
        # Wrist: R_shaft^T R = Rz(roll) Rx(wrist_pitch) Ry(wrist_yaw).
        s = _shaft(q[0], q[1])

        def rw(i, j):
            return s[0][i] * rot[0][j] + s[1][i] * rot[1][j] + s[2][i] * rot[2][j]
        q[4] = math.asin(min(1.0, max(-1.0, rw(2, 1))))
        q[5] = math.atan2(-rw(2, 0), rw(2, 2))
        q[3] = self._roll_branch(math.atan2(-rw(0, 1), rw(1, 1)), ref[3])
        for i in range(3, 6):
            clamped = min(upper[i], max(lower[i], q[i]))
            if clamped != q[i]:
                hit.append(i)
                q[i] = clamped
        reached_p, reached_q = self.fk_pose(q)
        if hit:
            reason = ','.join(IK_REASONS[1 + i] for i in sorted(hit))
            return IkResult(np.array(q), reached_p, reached_q, False, reason)
        return IkResult(np.array(q), reached_p, reached_q, True)

    def _roll_branch(self, roll, reference):
        """Roll + 2 pi k closest to ``reference`` within the limits (else the closest)."""
        turns = round((reference - roll) / (2 * math.pi))
        candidates = [roll + 2 * math.pi * k for k in (turns - 1, turns, turns + 1)]
        inside = [c for c in candidates if self.lower[3] <= c <= self.upper[3]]
        return min(inside or candidates, key=lambda c: abs(c - reference))
