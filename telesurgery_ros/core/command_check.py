"""
Validity of one tool-tip command, shared by the slave and the watchdog.

The slave never executes an invalid command; the watchdog counts them and holds the arm.
A command is a stamped pose in the RCM frame. It is rejected when it is not finite, its
quaternion is not unit, it lies outside the workspace, it jumps further from the last accepted
command than the arm's maximum speed allows over the stamp difference, its stamp is not newer
than the last accepted one (replayed or out of order), or its stamp is in the future (only
where the two sites share a clock).
"""
from dataclasses import dataclass
import math

import numpy as np


@dataclass(frozen=True)
class CommandLimits:
    """Thresholds for :class:`CommandChecker` (metres, seconds)."""

    max_speed: float = 0.5              # m/s, fastest tool-tip motion a command may ask for
    jump_margin: float = 0.002          # m, allowed on top of max_speed * dt
    quaternion_tolerance: float = 0.01  # |1 - |q||
    workspace_radius: float = 0.25      # m, tool tip within this distance of the RCM ...
    workspace_min_depth: float = 0.01   # m, ... and at least this far below it (z <= -depth)
    future_tolerance: float = 0.05      # s, stamp may lead the local clock by this much
    check_future: bool = True           # False for split-site deployments without clock sync


REASONS = ('non_finite', 'quaternion', 'workspace', 'jump', 'stale_stamp', 'future_stamp')


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ''    # one of REASONS when not ok
    detail: str = ''


ACCEPT = Verdict(True)


class CommandChecker:
    """Stateful validator: remembers the last accepted command's stamp and position."""

    def __init__(self, limits=CommandLimits()):
        self.limits = limits
        self.last_stamp = None
        self.last_position = None
        self.rejected = dict.fromkeys(REASONS, 0)
        self.accepted = 0

    def reset(self, position=None, stamp=None):
        """Forget history (or re-anchor it, e.g. to the arm's pose after a re-alignment)."""
        self.last_position = None if position is None else np.asarray(position, float)
        self.last_stamp = stamp

    def check(self, stamp, position, quaternion, now):
        """Judge one command; ``stamp`` and ``now`` in seconds. Accepted ones update state."""
        verdict = self._judge(stamp, np.asarray(position, float),
                              np.asarray(quaternion, float), now)
        if verdict.ok:
            self.accepted += 1
            self.last_stamp = stamp
            self.last_position = np.asarray(position, float)
        else:
            self.rejected[verdict.reason] += 1
        return verdict

    def _judge(self, stamp, p, q, now):
        lim = self.limits
        if not (math.isfinite(stamp) and np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            return Verdict(False, 'non_finite', 'NaN or inf in the command')
        norm = float(np.linalg.norm(q))
        if abs(1.0 - norm) > lim.quaternion_tolerance:
            return Verdict(False, 'quaternion', f'|q| = {norm:.4f} is not 1')
        distance = float(np.linalg.norm(p))
        if distance > lim.workspace_radius or p[2] > -lim.workspace_min_depth:
            return Verdict(False, 'workspace',
                           f'tip at {np.round(p, 4).tolist()} m is outside the workspace')
        if lim.check_future and stamp > now + lim.future_tolerance:
            return Verdict(False, 'future_stamp', f'stamp {stamp - now:.3f} s in the future')
        if self.last_stamp is not None and stamp <= self.last_stamp:
            return Verdict(False, 'stale_stamp',
                           f'stamp {self.last_stamp - stamp:.3f} s not newer than the last')
        if self.last_position is not None:
            dt = 0.0 if self.last_stamp is None else stamp - self.last_stamp
            step = float(np.linalg.norm(p - self.last_position))
            allowed = lim.max_speed * dt + lim.jump_margin
            if step > allowed:
                return Verdict(False, 'jump',
                               f'{step * 1000:.1f} mm in {dt * 1000:.1f} ms '
                               f'(allowed {allowed * 1000:.1f} mm)')
        return ACCEPT
