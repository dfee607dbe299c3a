"""
The arm's URDF as a tree of frames: every joint parsed, every link's transform from joint values.

No ROS here. :class:`RobotModel` reads the ``<joint>`` elements of a URDF (type, parent and
child link, ``origin`` xyz/rpy, ``axis``, ``mimic``) and computes, as robot_state_publisher
does, one transform per joint from the parent link's frame to the child link's frame:

- fixed joints give the *static* transforms (``/tf_static``), valid for all time;
- revolute, continuous and prismatic joints give the *moving* transforms (``/tf``), from the
  joint positions of a ``sensor_msgs/JointState`` (mimic joints follow the joint they mimic:
  ``value = multiplier * mimicked + offset``).

URDF conventions: ``rpy`` are fixed-axis roll, pitch, yaw (R = Rz(yaw) Ry(pitch) Rx(roll)), a
revolute joint turns about ``axis`` in the joint frame, a prismatic one slides along it; the
joint frame is the ``origin`` in the parent link's frame. Quaternions here are (x, y, z, w)
as in ROS messages; transforms3d (w, x, y, z) does the conversions.
"""
from dataclasses import dataclass
import math
import xml.etree.ElementTree as ElementTree

import numpy as np
from transforms3d import euler, quaternions

MOVING_TYPES = ('revolute', 'continuous', 'prismatic')
SUPPORTED_TYPES = MOVING_TYPES + ('fixed',)
IDENTITY = (0.0, 0.0, 0.0, 1.0)


class UrdfError(ValueError):
    """The URDF is not valid, or uses something this model does not handle."""


@dataclass(frozen=True)
class Transform:
    """A parent -> child frame transform: the child frame's pose in the parent frame."""

    parent: str
    child: str
    translation: tuple          # m, (x, y, z)
    rotation: tuple             # unit quaternion (x, y, z, w)


@dataclass(frozen=True)
class Mimic:
    joint: str
    multiplier: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Joint:
    """One URDF joint; ``origin_rotation`` is (w, x, y, z) for transforms3d."""

    name: str
    type: str  # noqa: A003 (the URDF attribute's name)
    parent: str
    child: str
    origin_xyz: tuple
    origin_rotation: tuple
    axis: tuple
    mimic: Mimic = None

    def __post_init__(self):
        # Set-up with transforms3d; transform() then runs on plain floats (it runs for every
        # joint of every joint state a recorder writes, hundreds of times a second).
        slide = quaternions.rotate_vector(np.asarray(self.axis), np.asarray(self.origin_rotation))
        object.__setattr__(self, '_slide', tuple(float(v) for v in slide))

    def transform(self, value=0.0):
        """Return the :class:`Transform` of this joint at position ``value`` (rad or m)."""
        w0, x0, y0, z0 = self.origin_rotation
        tx, ty, tz = self.origin_xyz
        if self.type in ('revolute', 'continuous'):
            # origin rotation, then the turn about the axis: q0 * (cos(a/2), sin(a/2) axis)
            c, s = math.cos(0.5 * value), math.sin(0.5 * value)
            ax, ay, az = self.axis
            w1, x1, y1, z1 = c, s * ax, s * ay, s * az
            w = w0 * w1 - x0 * x1 - y0 * y1 - z0 * z1
            x = w0 * x1 + x0 * w1 + y0 * z1 - z0 * y1
            y = w0 * y1 - x0 * z1 + y0 * w1 + z0 * x1
            z = w0 * z1 + x0 * y1 - y0 * x1 + z0 * w1
            return Transform(self.parent, self.child, (tx, ty, tz), (x, y, z, w))
        if self.type == 'prismatic':
            sx, sy, sz = self._slide       # the axis in the parent frame
            tx, ty, tz = tx + sx * value, ty + sy * value, tz + sz * value
        return Transform(self.parent, self.child, (tx, ty, tz), (x0, y0, z0, w0))


def _floats(text, count, what):
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise UrdfError(f'{what}: expected {count} finite numbers, got {text!r}')
    return values


def _parse_joint(element):
    name = element.get('name')
    kind = element.get('type')
    where = f'joint {name!r}'
    if not name:
        raise UrdfError('a <joint> has no name')
    if kind not in SUPPORTED_TYPES:
        raise UrdfError(f'{where}: type {kind!r} not supported (one of '
                        f'{", ".join(SUPPORTED_TYPES)})')
    links = []
    for tag in ('parent', 'child'):
        node = element.find(tag)
        if node is None or not node.get('link'):
            raise UrdfError(f'{where}: no <{tag} link=...>')
        links.append(node.get('link'))
    origin = element.find('origin')
    xyz = _floats(origin.get('xyz', '0 0 0'), 3, f'{where} origin xyz') if origin is not None \
        else (0.0, 0.0, 0.0)
    rpy = _floats(origin.get('rpy', '0 0 0'), 3, f'{where} origin rpy') if origin is not None \
        else (0.0, 0.0, 0.0)
    rotation = tuple(float(v) for v in euler.euler2quat(*rpy, axes='sxyz'))
    axis_node = element.find('axis')
    axis = _floats(axis_node.get('xyz', '1 0 0'), 3, f'{where} axis') if axis_node is not None \
        else (1.0, 0.0, 0.0)
    norm = math.sqrt(sum(a * a for a in axis))
    if kind in MOVING_TYPES and norm < 1e-12:
        raise UrdfError(f'{where}: axis has zero length')
    axis = tuple(a / norm for a in axis) if norm else axis
    mimic = None
    mimic_node = element.find('mimic')
    if mimic_node is not None:
        if not mimic_node.get('joint'):
            raise UrdfError(f'{where}: <mimic> names no joint')
        mimic = Mimic(mimic_node.get('joint'),
                      _floats(mimic_node.get('multiplier', '1'), 1, f'{where} mimic')[0],
                      _floats(mimic_node.get('offset', '0'), 1, f'{where} mimic')[0])
    return Joint(name, kind, links[0], links[1], xyz, rotation, axis, mimic)


class RobotModel:
    """The joints of one URDF and the frame transforms they give."""

    def __init__(self, name, links, joints):
        self.name = name
        self.links = list(links)
        self.joints = list(joints)
        self._check_tree()
        by_name = {j.name: j for j in self.joints}
        for joint in self.joints:
            if joint.mimic is not None:
                target = by_name.get(joint.mimic.joint)
                if target is None or target.type not in MOVING_TYPES:
                    raise UrdfError(f'joint {joint.name!r} mimics {joint.mimic.joint!r}, '
                                    'which is not a moving joint of this URDF')
        self._by_name = by_name
        self.static_joints = [j for j in self.joints if j.type == 'fixed']
        self.moving_joints = [j for j in self.joints if j.type in MOVING_TYPES]

    @classmethod
    def from_urdf(cls, text):
        """Parse URDF text (raise :class:`UrdfError` naming what is wrong)."""
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as exc:
            raise UrdfError(f'not valid XML: {exc}') from None
        if root.tag != 'robot':
            raise UrdfError(f'the root element is <{root.tag}>, not <robot>')
        links = [link.get('name') for link in root.findall('link')]
        return cls(root.get('name', ''), links, [_parse_joint(j) for j in root.findall('joint')])

    @classmethod
    def from_file(cls, path):
        with open(path) as handle:
            return cls.from_urdf(handle.read())

    def _check_tree(self):
        known = set(self.links)
        parents = {}
        for joint in self.joints:
            for link in (joint.parent, joint.child):
                if link not in known:
                    raise UrdfError(f'joint {joint.name!r} names link {link!r}, which has no '
                                    '<link> element')
            if joint.child in parents:
                raise UrdfError(f'link {joint.child!r} is the child of two joints')
            parents[joint.child] = joint.parent
        roots = [link for link in self.links if link not in parents]
        if len(roots) != 1:
            raise UrdfError(f'a URDF has one root link; this one has {roots}')
        self.root = roots[0]

    @property
    def state_joint_names(self):
        """Return the joints a joint state must carry: the moving joints that mimic no other."""
        return [j.name for j in self.moving_joints if j.mimic is None]

    def joint(self, name):
        return self._by_name[name]

    def static_transforms(self):
        """Return the fixed joints' transforms (``/tf_static``)."""
        return [j.transform() for j in self.static_joints]

    def moving_transforms(self, positions):
        """
        Return the moving joints' transforms (``/tf``) for ``positions`` ({joint name: value}).

        Raise KeyError naming the joints missing from ``positions``.
        """
        missing = [n for n in self.state_joint_names if n not in positions]
        if missing:
            raise KeyError(f'no position for joint(s) {", ".join(missing)}')
        return [j.transform(self._value(j, positions)) for j in self.moving_joints]

    def _value(self, joint, positions, depth=0):
        if joint.mimic is None:
            return float(positions[joint.name])
        if depth > len(self.joints):
            raise UrdfError(f'mimic joints form a cycle at {joint.name!r}')
        target = self._by_name[joint.mimic.joint]
        return joint.mimic.multiplier * self._value(target, positions, depth + 1) + \
            joint.mimic.offset


def to_matrix(transform):
    """Return a :class:`Transform` as a 4x4 homogeneous matrix."""
    x, y, z, w = transform.rotation
    matrix = np.eye(4)
    matrix[:3, :3] = quaternions.quat2mat((w, x, y, z))
    matrix[:3, 3] = transform.translation
    return matrix


def lookup(transforms, target, source):
    """
    Pose of frame ``source`` in frame ``target`` (4x4) from parent -> child ``transforms``.

    ``target`` must be ``source`` or one of its ancestors (as tf2's chain to a parent);
    raise LookupError naming the frame where the chain breaks.
    """
    parent_of = {t.child: t for t in transforms}
    matrix = np.eye(4)
    frame = source
    for _step in range(len(transforms) + 1):
        if frame == target:
            return matrix
        step = parent_of.get(frame)
        if step is None:
            raise LookupError(f'frame {frame!r} has no parent on the way to {target!r}')
        matrix = to_matrix(step) @ matrix
        frame = step.parent
    raise LookupError(f'the transforms form a cycle above {source!r}')
