"""
The viewer's PyBullet world: the arm, its ghosts, the trails and the HUD panels, no physics.

A :class:`ViewerScene` owns one PyBullet client (GUI for the viewer, DIRECT for tests) that is
never stepped: joints are set from the joint states, ghosts are arm copies posed by our IK,
trails are rings of small beads, and the HUD panels are textured quads held in front of the
camera. Every call into a GUI client that touches the renderer (textures, debug items) waits
for the GUI thread, so a frame makes few of them: joints and bead moves go to the physics
server (fast), each HUD panel is one ``changeTexture``. No ROS here.
"""
import contextlib
import os
import tempfile

import numpy as np
from PIL import Image
import pybullet as pb
from telesurgery_ros.core.params import ConfigError
from telesurgery_ros.core.sim import BASE_POSITION, SCENE
from telesurgery_ros.core.viewer import CAMERA_PRESETS, panel_pose

FAR_AWAY = (0.0, 0.0, -50.0)       # where hidden ghosts and unused beads wait
BEAD_RADIUS = 0.0015               # m
PANEL_DEPTH = 0.05                 # m in front of the camera (its near plane is at 0.01 m)


@contextlib.contextmanager
def _quiet(capture=None):
    """Silence PyBullet's C-level stdout/stderr chatter; keep it in ``capture`` if given."""
    with tempfile.TemporaryFile(mode='w+b') as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if capture is not None:
                sink.seek(0)
                capture.append(sink.read().decode(errors='replace'))


def check_urdf(path):
    """Raise :class:`ConfigError` (one line) unless PyBullet loads the URDF at ``path``."""
    if not os.path.isfile(path):
        raise ConfigError([f"parameter 'urdf': no such file: {path}"])
    output = []
    client = pb.connect(pb.DIRECT)
    try:
        with _quiet(output):
            pb.loadURDF(path, useFixedBase=True, physicsClientId=client)
    except pb.error as exc:
        detail = [line.strip() for line in ''.join(output).splitlines()
                  if line.strip() and not line.startswith('b3')]
        raise ConfigError([f"parameter 'urdf': PyBullet cannot load {path}: "
                           + (detail[0] if detail else str(exc))]) from None
    finally:
        pb.disconnect(physicsClientId=client)


class ViewerScene:
    """
    One PyBullet client showing the arm (and the scene), ghosts, trails and HUD panels.

    ``panels`` maps a name to ``(anchor, (width, height))`` in pixels: anchor 'top_left' or
    'bottom_left'. ``window`` is the GUI window size and ``fps`` caps the GUI thread's redraw
    rate (PyBullet's ``--minGraphicsUpdateTimeMs``, which it reads in microseconds).
    """

    def __init__(self, urdf, scene=True, gui=True, window=(1280, 720), fps=30.0, ghosts=(),
                 ghost_alpha=0.35, trails=(), trail_length=45, panels=None):
        self.gui = bool(gui)
        self.window = tuple(int(v) for v in window)
        options = (f'--width={self.window[0]} --height={self.window[1]} '
                   f'--minGraphicsUpdateTimeMs={int(1e6 / fps)}')
        with _quiet():
            self.client = pb.connect(pb.GUI if self.gui else pb.DIRECT, options=options)
        if self.client < 0:
            raise RuntimeError('PyBullet could not open its GUI')
        cid = self.client
        if self.gui:
            for flag in (pb.COV_ENABLE_GUI, pb.COV_ENABLE_SHADOWS,
                         pb.COV_ENABLE_KEYBOARD_SHORTCUTS, pb.COV_ENABLE_MOUSE_PICKING):
                pb.configureDebugVisualizer(flag, 0, physicsClientId=cid)
            # No redraws while the world is built (one redraw per loaded body otherwise).
            pb.configureDebugVisualizer(pb.COV_ENABLE_RENDERING, 0, physicsClientId=cid)
        self.arm = self._load_arm(urdf)
        self.joint_index = {pb.getJointInfo(self.arm, j, physicsClientId=cid)[1].decode(): j
                            for j in range(pb.getNumJoints(self.arm, physicsClientId=cid))}
        link_index = {pb.getJointInfo(self.arm, j, physicsClientId=cid)[12].decode(): j
                      for j in range(pb.getNumJoints(self.arm, physicsClientId=cid))}
        state = pb.getLinkState(self.arm, link_index['psm1_rcm'], computeForwardKinematics=True,
                                physicsClientId=cid)
        self.rcm_position = np.array(state[4])      # the RCM frame is parallel to world
        self.scene = self._load_scene() if scene else {}
        self.ghosts = []
        for colour in ghosts:
            body = self._load_arm(urdf)
            for link in range(-1, pb.getNumJoints(body, physicsClientId=cid)):
                pb.changeVisualShape(body, link, rgbaColor=[*colour[:3], ghost_alpha],
                                     specularColor=[0.0, 0.0, 0.0], physicsClientId=cid)
            self._place(body, FAR_AWAY)
            self.ghosts.append(body)
        self._ghost_shown = [False] * len(self.ghosts)
        self.trails = [self._beads(colour, trail_length) for colour in trails]
        self._textures = {}
        self._panels = {}
        self._texture_dir = tempfile.TemporaryDirectory(prefix='arm_viewer_')
        for name, (anchor, size) in (panels or {}).items():
            self._add_panel(name, anchor, size)
        self._camera_key = None
        if self.gui:
            pb.configureDebugVisualizer(pb.COV_ENABLE_RENDERING, 1, physicsClientId=cid)

    # --- building ---------------------------------------------------------------------------

    def _load_arm(self, urdf):
        return pb.loadURDF(urdf, BASE_POSITION, useFixedBase=True, physicsClientId=self.client)

    def _load_scene(self):
        from telesurgery_ros.resources import data_path
        folder = data_path('urdf', 'scene')
        bodies = {}
        for name, position, fixed in SCENE:
            bodies[name.rsplit('.', 1)[0]] = pb.loadURDF(
                os.path.join(folder, name), position, useFixedBase=fixed,
                physicsClientId=self.client)
        return bodies

    def _place(self, body, position, orientation=(0.0, 0.0, 0.0, 1.0)):
        pb.resetBasePositionAndOrientation(body, list(position), list(orientation),
                                           physicsClientId=self.client)

    def _beads(self, colour, count):
        shape = pb.createVisualShape(pb.GEOM_SPHERE, radius=BEAD_RADIUS,
                                     rgbaColor=[*colour[:3], 1.0],
                                     specularColor=[0.0, 0.0, 0.0],
                                     physicsClientId=self.client)
        bodies = pb.createMultiBody(baseMass=0.0, baseVisualShapeIndex=shape,
                                    batchPositions=[list(FAR_AWAY)] * count,
                                    physicsClientId=self.client)
        return list(bodies) if isinstance(bodies, (list, tuple)) else [bodies]

    def _add_panel(self, name, anchor, size):
        width, height = (int(v) for v in size)
        path = os.path.join(self._texture_dir.name, f'{name}.png')
        Image.new('RGB', (width, height), (0, 0, 0)).save(path)
        texture = pb.loadTexture(path, physicsClientId=self.client)
        # A quad of unit size in its own frame (x right, y up, facing +z); scaled at placing.
        self._panels[name] = {'anchor': anchor, 'size': (width, height), 'texture': texture,
                              'body': None}

    def _panel_body(self, name, half_w, half_h):
        panel = self._panels[name]
        if panel['body'] is not None and panel['half'] == (half_w, half_h):
            return panel['body']
        if panel['body'] is not None:
            pb.removeBody(panel['body'], physicsClientId=self.client)
        vertices = [[-half_w, -half_h, 0.0], [half_w, -half_h, 0.0], [half_w, half_h, 0.0],
                    [-half_w, half_h, 0.0]]
        shape = pb.createVisualShape(pb.GEOM_MESH, vertices=vertices, indices=[0, 1, 2, 0, 2, 3],
                                     uvs=[[0, 0], [1, 0], [1, 1], [0, 1]],
                                     normals=[[0.0, 0.0, 1.0]] * 4,
                                     rgbaColor=[1.0, 1.0, 1.0, 1.0],
                                     specularColor=[0.0, 0.0, 0.0],
                                     physicsClientId=self.client)
        body = pb.createMultiBody(baseMass=0.0, baseVisualShapeIndex=shape,
                                  basePosition=list(FAR_AWAY), physicsClientId=self.client)
        pb.changeVisualShape(body, -1, textureUniqueId=panel['texture'],
                             physicsClientId=self.client)
        panel['body'], panel['half'] = body, (half_w, half_h)
        return body

    # --- per frame --------------------------------------------------------------------------

    def connected(self):
        return pb.isConnected(physicsClientId=self.client)

    def keyboard_events(self):
        return pb.getKeyboardEvents(physicsClientId=self.client) if self.gui else {}

    def _set_joints(self, body, targets):
        names = [n for n in targets if n in self.joint_index]
        if names:
            pb.resetJointStatesMultiDof(body, [self.joint_index[n] for n in names],
                                        [[float(targets[n])] for n in names],
                                        physicsClientId=self.client)

    def set_arm(self, targets):
        """Pose the arm: ``targets`` maps URDF joint names to positions."""
        self._set_joints(self.arm, targets)

    def set_ghost(self, index, targets):
        """Pose ghost ``index`` (URDF joint name -> position), or hide it (None)."""
        body = self.ghosts[index]
        shown = targets is not None
        if shown != self._ghost_shown[index]:
            self._place(body, BASE_POSITION if shown else FAR_AWAY)
            self._ghost_shown[index] = shown
        if shown:
            self._set_joints(body, targets)

    def move_bead(self, trail, index, world_position):
        self._place(self.trails[trail][index], world_position)

    def hide_trail(self, trail):
        for bead in self.trails[trail]:
            self._place(bead, FAR_AWAY)

    def world(self, rcm_position):
        """Return the world position of a position in the RCM frame (axes parallel to world)."""
        return self.rcm_position + np.asarray(rcm_position, float)

    def link_world(self, body, link_name):
        """World position of a link frame of ``body`` (tests; the arm's link names)."""
        link = next(j for j in range(pb.getNumJoints(body, physicsClientId=self.client))
                    if pb.getJointInfo(body, j, physicsClientId=self.client)[12].decode()
                    == link_name)
        state = pb.getLinkState(body, link, computeForwardKinematics=True,
                                physicsClientId=self.client)
        return np.array(state[4])

    def set_camera(self, preset):
        """Move the camera to a preset (the HUD panels follow)."""
        camera = CAMERA_PRESETS[preset]
        pb.resetDebugVisualizerCamera(camera.distance, camera.yaw, camera.pitch,
                                      list(camera.target), physicsClientId=self.client)
        self.place_panels()

    def place_panels(self):
        """Keep the HUD panels in front of the camera; True when they moved (camera moved)."""
        if not self.gui or not self._panels:
            return False
        camera = pb.getDebugVisualizerCamera(physicsClientId=self.client)
        width, height, view, projection = camera[0], camera[1], camera[2], camera[3]
        key = (width, height, tuple(round(v, 6) for v in view),
               tuple(round(v, 6) for v in projection))
        if key == self._camera_key or width <= 0 or height <= 0:
            return False
        self._camera_key = key
        for name, panel in self._panels.items():
            w, h = panel['size']
            y = 0 if panel['anchor'] == 'top_left' else height - h
            centre, quaternion, half_w, half_h = panel_pose(view, projection, (width, height),
                                                            (0, y, w, h), PANEL_DEPTH)
            self._place(self._panel_body(name, half_w, half_h), centre, quaternion)
        return True

    def set_panel(self, name, rgb):
        """Show an RGB image (height, width, 3 uint8, the panel's size) on panel ``name``."""
        panel = self._panels[name]
        height, width = rgb.shape[:2]
        if (width, height) != panel['size']:
            raise ValueError(f'panel {name} is {panel["size"]}, image is {(width, height)}')
        pb.changeTexture(panel['texture'], np.ascontiguousarray(rgb, np.uint8).tobytes(),
                         width, height, physicsClientId=self.client)

    def close(self):
        if self.client is not None and pb.isConnected(physicsClientId=self.client):
            with _quiet():
                pb.disconnect(physicsClientId=self.client)
        self.client = None
        self._texture_dir.cleanup()
