"""
The PyBullet world of the patient site: the PSM-like arm, the table, the patient, a task board.

No ROS here. :class:`Sim` loads ``urdf/psm.urdf`` and the scene (``urdf/scene/*.urdf``), steps
the physics at a fixed time step and reads joints, link poses and tool contacts. Joint vectors
have 7 entries: the six joints of :data:`~telesurgery_ros.core.kinematics.JOINT_NAMES` and the
jaw opening angle (the two fingers move by +-jaw/2).
"""
import numpy as np
import pybullet as pb

from telesurgery_ros.core import kinematics
from telesurgery_ros.core.kinematics import quat_to_matrix

# The arm's base in the world: the RCM (0.3, 0.6, 1.05 from the base) lands at (0, 0, 1.05),
# the port in the patient's abdominal wall.
BASE_POSITION = (-0.3, -0.6, 0.0)
# Scene objects: (file under urdf/scene, world position, fixed base).
SCENE = (
    ('operating_table.urdf', (0.0, 0.0, 0.0), True),
    ('patient.urdf', (0.0, 0.0, 0.8), True),
    ('task_board.urdf', (0.0, 0.0, 0.9), True),
)
# Links of the instrument whose contacts make the tool force (measured_cf).
TOOL_LINKS = ('psm1_shaft_link', 'psm1_wrist_pitch_link', 'psm1_wrist_yaw_link',
              'psm1_jaw_left', 'psm1_jaw_right', 'psm1_tool_tip')
# Motor gains of PyBullet's position control (dimensionless, per joint) and effort limits.
POSITION_GAIN = 0.3
VELOCITY_GAIN = 1.0


def arm_urdf():
    from telesurgery_ros.resources import data_path
    return data_path('urdf', 'psm.urdf')


class Sim:
    """One PyBullet world (DIRECT, or GUI) with the arm and, optionally, the scene."""

    def __init__(self, urdf_path=None, scene=True, gui=False, time_step=1e-3, gravity=True,
                 base_position=BASE_POSITION, scene_dir=None):
        # The physics always runs in a DIRECT client; the GUI, when asked for, is a second
        # client that only shows the same world (sync_viewer() copies the joints), because
        # every call into a GUI client waits for its render thread.
        self.client = pb.connect(pb.DIRECT)
        self.viewer = None
        self.time_step = float(time_step)
        cid = self.client
        pb.setTimeStep(self.time_step, physicsClientId=cid)
        pb.setGravity(0.0, 0.0, -9.81 if gravity else 0.0, physicsClientId=cid)
        self._urdf = urdf_path or arm_urdf()
        self._base_position = base_position
        self.arm = pb.loadURDF(self._urdf, base_position, useFixedBase=True,
                               flags=pb.URDF_USE_INERTIA_FROM_FILE, physicsClientId=cid)
        self.joint_index = {}
        self.link_index = {}
        for j in range(pb.getNumJoints(self.arm, physicsClientId=cid)):
            info = pb.getJointInfo(self.arm, j, physicsClientId=cid)
            self.joint_index[info[1].decode()] = j
            self.link_index[info[12].decode()] = j
        self.arm_joints = [self.joint_index[n] for n in kinematics.JOINT_NAMES]
        self.jaw_joints = [self.joint_index['jaw_left'], self.joint_index['jaw_right']]
        self.motor_joints = self.arm_joints + self.jaw_joints
        effort = [pb.getJointInfo(self.arm, j, physicsClientId=cid)[10]
                  for j in self.motor_joints]
        self.max_force = np.array(effort)
        self._forces = [float(f) for f in effort]
        self._kp = [POSITION_GAIN] * len(self.motor_joints)
        self._kd = [VELOCITY_GAIN] * len(self.motor_joints)
        self.tool_links = {self.link_index[n] for n in TOOL_LINKS}
        state = pb.getLinkState(self.arm, self.link_index['psm1_rcm'],
                                computeForwardKinematics=True, physicsClientId=cid)
        self.rcm_position = np.array(state[4])
        self.rcm_rotation = quat_to_matrix(state[5])
        self._scene_dir = scene_dir
        self.scene = self._load_scene(cid) if scene else {}
        if gui:
            self._open_viewer(scene)

    def _open_viewer(self, scene):
        viewer = pb.connect(pb.GUI)
        if viewer < 0:
            raise RuntimeError('PyBullet could not open its GUI (is DISPLAY set?)')
        self.viewer = viewer
        pb.configureDebugVisualizer(pb.COV_ENABLE_GUI, 0, physicsClientId=viewer)
        pb.configureDebugVisualizer(pb.COV_ENABLE_SHADOWS, 0, physicsClientId=viewer)
        self.viewer_arm = pb.loadURDF(self._urdf, self._base_position, useFixedBase=True,
                                      physicsClientId=viewer)
        if scene:
            self._load_scene(viewer)
        self.sync_viewer()

    def sync_viewer(self):
        """Show the current joint positions in the GUI (no-op without a GUI)."""
        if self.viewer is None:
            return
        states = pb.getJointStates(self.arm, self.motor_joints, physicsClientId=self.client)
        # One call: each separate call into the GUI client may wait for a rendered frame.
        pb.resetJointStatesMultiDof(self.viewer_arm, self.motor_joints,
                                    [[state[0]] for state in states],
                                    physicsClientId=self.viewer)

    def _load_scene(self, cid):
        import os
        from telesurgery_ros.resources import data_path
        folder = self._scene_dir or data_path('urdf', 'scene')
        bodies = {}
        for name, position, fixed in SCENE:
            body = pb.loadURDF(os.path.join(folder, name), position, useFixedBase=fixed,
                               physicsClientId=cid)
            bodies[name.rsplit('.', 1)[0]] = body
        if cid != self.client:
            return bodies
        self.scene = bodies
        # The instrument passes through the port: the body wall never collides with the arm.
        wall = self.scene.get('patient')
        if wall is not None:
            for link in range(-1, pb.getNumJoints(self.arm, physicsClientId=cid)):
                for other in range(-1, pb.getNumJoints(wall, physicsClientId=cid)):
                    pb.setCollisionFilterPair(self.arm, wall, link, other, 0,
                                              physicsClientId=cid)
        return bodies

    # --- joints ---------------------------------------------------------------------------

    def reset(self, q):
        """Teleport the arm to joints ``q`` (7: six joints and the jaw), at rest."""
        targets = self._targets(q)
        for j, value in zip(self.motor_joints, targets):
            pb.resetJointState(self.arm, j, value, 0.0, physicsClientId=self.client)
        self.command(q)

    @staticmethod
    def _targets(q):
        half = 0.5 * float(q[6])
        return [float(v) for v in q[:6]] + [half, -half]

    def command(self, q, velocity=None):
        """Position-control the joints towards ``q`` (7) with feed-forward ``velocity`` (7)."""
        v = self._targets(velocity) if velocity is not None else [0.0] * 8
        pb.setJointMotorControlArray(
            self.arm, self.motor_joints, pb.POSITION_CONTROL,
            targetPositions=self._targets(q), targetVelocities=v, forces=self._forces,
            positionGains=self._kp, velocityGains=self._kd, physicsClientId=self.client)

    def step(self, count=1):
        for _ in range(count):
            pb.stepSimulation(physicsClientId=self.client)

    def read(self):
        """Return (positions[7], velocities[7], efforts[7]) lists; the jaw is the opening."""
        s = pb.getJointStates(self.arm, self.motor_joints, physicsClientId=self.client)
        pos = [j[0] for j in s[:6]]
        vel = [j[1] for j in s[:6]]
        eff = [j[3] for j in s[:6]]
        pos.append(s[6][0] - s[7][0])
        vel.append(s[6][1] - s[7][1])
        eff.append(0.5 * (s[6][3] - s[7][3]))
        return pos, vel, eff

    # --- poses and forces -----------------------------------------------------------------

    def link_pose_world(self, name):
        """World pose of a URDF link frame: (position[3], quaternion x, y, z, w)."""
        state = pb.getLinkState(self.arm, self.link_index[name], computeForwardKinematics=True,
                                physicsClientId=self.client)
        return np.array(state[4]), np.array(state[5])

    def link_pose_rcm(self, name):
        """Pose of a URDF link frame in the RCM frame: (position[3], rotation 3x3)."""
        p, q = self.link_pose_world(name)
        r_t = self.rcm_rotation.T
        return r_t @ (p - self.rcm_position), r_t @ quat_to_matrix(q)

    def tool_force(self):
        """Sum of the contact forces on the instrument links, in the RCM frame (N)."""
        total = np.zeros(3)
        for c in pb.getContactPoints(bodyA=self.arm, physicsClientId=self.client):
            if c[3] not in self.tool_links:
                continue
            # Force on body A: normal force along the normal on B (which points B -> A),
            # plus the two friction directions.
            total += c[9] * np.asarray(c[7])
            total += c[10] * np.asarray(c[11]) + c[12] * np.asarray(c[13])
        return self.rcm_rotation.T @ total

    # --- GUI --------------------------------------------------------------------------------

    def aim_camera(self, distance=0.55, yaw=50.0, pitch=-28.0, target=None):
        """Aim the GUI camera at ``target`` (world), by default the tool tip."""
        if target is None:
            target = self.link_pose_world('psm1_tool_tip')[0]
        if self.viewer is not None:
            pb.resetDebugVisualizerCamera(distance, yaw, pitch, list(target),
                                          physicsClientId=self.viewer)

    def capture(self, width=960, height=640, distance=0.55, yaw=50.0, pitch=-28.0,
                target=None):
        """Render an RGB image (height x width x 3, uint8) from the same viewpoint."""
        if target is None:
            target = self.link_pose_world('psm1_tool_tip')[0]
        cid = self.client if self.viewer is None else self.viewer
        self.sync_viewer()
        view = pb.computeViewMatrixFromYawPitchRoll(list(target), distance, yaw, pitch, 0.0, 2,
                                                    physicsClientId=cid)
        proj = pb.computeProjectionMatrixFOV(50.0, width / height, 0.02, 10.0,
                                             physicsClientId=cid)
        renderer = pb.ER_TINY_RENDERER if self.viewer is None else pb.ER_BULLET_HARDWARE_OPENGL
        img = pb.getCameraImage(width, height, view, proj, renderer=renderer,
                                physicsClientId=cid)
        rgba = np.reshape(np.asarray(img[2], np.uint8), (height, width, 4))
        return rgba[:, :, :3]

    def close(self):
        for cid in (self.viewer, self.client):
            if cid is not None and pb.isConnected(physicsClientId=cid):
                pb.disconnect(physicsClientId=cid)
        self.client = self.viewer = None
