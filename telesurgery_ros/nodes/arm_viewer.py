"""
arm_viewer: the lab demo's window, with the controls for a visitor.

It shows the arm, the surgeon's hand as a ghost, the network and the safety state. A thin
adapter: :mod:`telesurgery_ros.core.viewer` decides what to draw and what the keys do,
:mod:`~.core.viewer_scene` draws it in a PyBullet GUI client (no physics: joints come from
``psm1/measured_js``, or ``console/psm1/measured_js`` in the surgeon view),
:mod:`~.core.viewer_hud` renders the HUD. Every input keeps only its newest message; frames
run at ``fps`` and are dropped, not queued, when the machine cannot keep up; the achieved fps
goes to ``/diagnostics``. The process runs at ``priority`` idle by default, so rendering only
uses CPU time no other node wants. The window's keys publish ``console/joy`` (read by
``master_console input:=joy``) and call ``network/blackout``, ``safety/estop``,
``safety/reset`` and the relay's ``set_parameters`` (``profile``), all asynchronously.
"""
import math
import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from telesurgery_ros import resources, rosutil, xdisplay
from telesurgery_ros.core import contract, kinematics, viewer
from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.core.profiles import default_profiles_path, load_profiles
from telesurgery_ros.core.realtime import make_realtime
from telesurgery_ros.core.viewer_hud import PanelRenderer
from telesurgery_ros.rosutil import run_node

_TOPICS = contract.arm_topics()
DEFAULT_GHOSTS = [contract.console_topic(_TOPICS['servo_cp']), contract.predicted_topic()]
VIEWS = {'patient': lambda t: t, 'surgeon': contract.console_topic}
PRIORITIES = ('idle', 'low', 'normal')
STATUS_PANEL = (410, 392)            # px, top left
KEYS_PANEL_HEIGHT = 46               # px, along the bottom
MESSAGES_SHOWN = 2                   # newest action results on the HUD
MESSAGE_LIFETIME = 30.0              # s
JOY_REPEAT_PRIORITY = 1              # SCHED_FIFO of the thread that repeats held keys
CAMERA_CHECK_PERIOD = 0.5            # s, how often the HUD panels follow a moved camera

PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace of the topics', read_only=True),
    Param('view', 'patient', "which side's joint states to draw: patient = psm1/measured_js, "
          'surgeon = console/psm1/measured_js (what the surgeon sees, one way late)',
          choices=tuple(VIEWS), read_only=True),
    Param('fps', 30.0, 'frames per second the viewer aims for (frames are dropped, not '
          'queued, when it cannot keep up)', 'Hz', 1.0, 60.0, read_only=True),
    Param('ghosts', list(DEFAULT_GHOSTS), 'pose topics (geometry_msgs/PoseStamped in the '
          'RCM frame) drawn as translucent arm copies, one colour each: the hand and the '
          'prediction by default', item_type=str, read_only=True,
          check=lambda v: None if len(v) <= len(viewer.GHOST_COLOURS) else
          f'at most {len(viewer.GHOST_COLOURS)} ghosts, got {len(v)}'),
    Param('ghost_alpha', 0.35, 'opacity of the ghosts', '', 0.05, 1.0, read_only=True),
    Param('ghost_timeout', 5.0, 'say once (a warning) when a ghost topic sent nothing this '
          'long after the start', 's', 0.5, 600.0, read_only=True),
    Param('ghost_stale', 1.0, 'hide a ghost whose newest pose is older than this', 's',
          0.05, 60.0),
    Param('trail.length', 3.0, 'how far back the tool-tip trails reach (0: no trails)', 's',
          0.0, 30.0, read_only=True),
    Param('trail.rate', 15.0, 'trail samples per second', 'Hz', 1.0, 60.0, read_only=True),
    Param('trail.commanded_topic', DEFAULT_GHOSTS[0], 'pose topic of the commanded trail '
          '(the measured trail follows the drawn arm)', read_only=True),
    Param('camera', 'endoscope', 'camera preset (the v key cycles them)',
          choices=viewer.CAMERAS),
    Param('hud_rate', 4.0, 'HUD refreshes per second at most (each one waits for the GUI '
          'thread)', 'Hz', 0.5, 30.0),
    Param('window.width', 1280, 'window width', 'px', 640, 3840, read_only=True),
    Param('window.height', 720, 'window height', 'px', 480, 2160, read_only=True),
    Param('urdf', '', "arm URDF; '' = the package's urdf/psm.urdf", read_only=True),
    Param('scene', True, 'draw the operating table, patient and task board', read_only=True),
    Param('keys', True, "the window's keys act (console/joy, blackout, e-stop, reset, "
          'profile); false: watch only'),
    Param('joy_rate', 20.0, 'while a motion key is held, console/joy is published at least '
          "this often (joy_node's autorepeat_rate), also between slow frames", 'Hz', 1.0,
          100.0, read_only=True),
    Param('joy_hold_timeout', 1.0, 'a held key is repeated between frames only while the '
          'keys were read this recently (a frozen viewer stops the stream; the console then '
          'stops the hand after its joy.timeout)', 's', 0.05, 5.0, read_only=True),
    Param('relay_node', 'network_relay', 'node whose profile parameter the p/o keys set '
          '(through its set_parameters service)', read_only=True),
    Param('profiles', [], 'profiles the p/o keys cycle through; [] = every profile of the '
          "package's config/network_profiles.yaml, in file order", item_type=str,
          read_only=True),
    Param('priority', 'idle', 'CPU priority of the rendering: idle = SCHED_IDLE (only CPU '
          'time nothing else of its session wants), low = nice 19, normal (the DDS threads '
          'stay idle). The control threads of the relay, watchdog, slave and site_link run '
          'SCHED_FIFO where permitted, above any of these',
          choices=PRIORITIES, read_only=True),
    Param('autogroup_nice', 19, "nice value of the viewer's autogroup (Linux shares CPU "
          'between sessions before threads, so SCHED_IDLE only ranks the viewer inside its own '
          'session): 19 (the default) gives it almost no weight against any other session '
          '(few frames on a saturated machine), 10 a tenth, 0 leaves it', '', 0, 19,
          read_only=True),
    Param('service_timeout', 5.0, 'an action with no answer this long is reported failed',
          's', 0.1, 60.0),
    Param('diagnostics_period', 1.0, 'period of the /diagnostics status', 's', 0.1, 60.0,
          read_only=True),
)


AUTOGROUP = '/proc/self/autogroup'


def _own_autogroup():
    """
    Return True when this process may set the nice value of its autogroup without touching others.

    Linux (``CONFIG_SCHED_AUTOGROUP``, on by default) shares CPU time fairly between sessions
    first and between threads only inside a session, so ``SCHED_IDLE`` alone ranks the
    viewer below nothing but its own session. The autogroup is the session's: when this
    process leads its own session (as ``telesurgery-launch`` starts every node), or becomes
    the leader of a new one, its autogroup holds only the viewer.
    """
    if os.getsid(0) == os.getpid():
        return True
    try:
        os.setsid()
    except OSError:
        return False             # a process group leader in someone's shell: leave it there
    return True


def _lower_autogroup(nice):
    """Give this session's autogroup ``nice``; return a phrase for the log (what is in force)."""
    if not os.path.exists(AUTOGROUP):
        return 'no autogroups'
    if nice > 0:
        if not _own_autogroup():
            return ('autogroup shared with the terminal session (not reniced; start the viewer '
                    'through a launch file for autogroup_nice)')
        try:
            with open(AUTOGROUP, 'w') as handle:
                handle.write(str(int(nice)))
        except OSError as exc:
            return f'autogroup nice {nice} refused ({exc.strerror})'
    with open(AUTOGROUP) as handle:
        return handle.read().strip().lstrip('/')          # e.g. 'autogroup-12 nice 19'


def _set_priority(priority, autogroup_nice=0):
    """
    Apply ``priority`` to the calling thread; threads it starts later inherit it.

    ``main()`` starts the process idle before rclpy (so its DDS threads and its start-up are
    idle too); the node then moves the render thread, and with it the GUI threads PyBullet
    starts, to the ``priority`` parameter, and its autogroup to ``autogroup_nice`` (see
    :func:`_own_autogroup`). Returns a phrase for the log.
    """
    if priority == 'idle':
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        policy = 'SCHED_IDLE'
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 19 if priority == 'low' else 0)
        policy = 'nice 19' if priority == 'low' else 'normal scheduling'
    return f'{policy}, {_lower_autogroup(autogroup_nice)}'


class ArmViewer(Node):
    """The PyBullet window of the lab demo (thin adapter over core.viewer*)."""

    def __init__(self):
        super().__init__('arm_viewer')
        cfg = rosutil.declare_parameters(self, PARAMETERS, self._on_change)
        urdf = cfg.urdf or resources.data_path('urdf', 'psm.urdf')
        from telesurgery_ros.core.viewer_scene import check_urdf, ViewerScene
        check_urdf(urdf)
        problem = xdisplay.check_display()
        if problem:
            raise ConfigError([problem])
        # File order: from no impairment to the worst (p = a longer way, o = back).
        self.profiles = list(cfg.profiles) or [
            name for name in load_profiles(default_profiles_path()) if not name.startswith('_')]
        # The threads PyBullet starts inherit this; the autogroup yields once the window is
        # built (at nice 19 from the start, a busy machine could keep it from opening at all).
        _set_priority(cfg.priority)
        self.kin = kinematics.PsmKinematics()
        self.topics = {role: VIEWS[cfg.view](name)
                       for role, name in contract.arm_topics(cfg.arm).items()}
        self.ghost_topics = list(cfg.ghosts)
        colours = viewer.GHOST_COLOURS[:len(self.ghost_topics)]
        trail_beads = int(round(cfg.trail.length * cfg.trail.rate))
        width, height = cfg.window.width, cfg.window.height
        self.status_panel = PanelRenderer(*STATUS_PANEL)
        self.keys_panel = PanelRenderer(width, KEYS_PANEL_HEIGHT)
        self.scene = ViewerScene(
            urdf, scene=cfg.scene, window=(width, height), fps=cfg.fps, ghosts=colours,
            ghost_alpha=cfg.ghost_alpha,
            trails=(viewer.GHOST_COLOURS[0], viewer.MEASURED_TRAIL_COLOUR) if trail_beads else (),
            trail_length=max(1, trail_beads),
            panels={'status': ('top_left', STATUS_PANEL),
                    'keys': ('bottom_left', (width, KEYS_PANEL_HEIGHT))})
        self.rings = [viewer.Ring(trail_beads) for _ in self.scene.trails]
        self.camera = cfg.camera
        self.scene.set_camera(self.camera)

        # Inputs: only the newest message of each stream is kept.
        latest = rosutil.LATEST_QOS
        self.joints = None            # (receive time, JointState)
        self.joints_drawn = None
        self.poses = {}               # topic -> (receive time, position, quaternion)
        self.received = {}            # topic -> count
        self.force = None
        self.safety = None
        self.stats = {}               # direction -> {key: value}
        self.teleop = {}              # master_console values
        self.loop = {}                # slave_controller values
        self.create_subscription(JointState, self.topics['measured_js'], self._on_joints,
                                 latest)
        self.create_subscription(WrenchStamped, self.topics['measured_cf'], self._on_force,
                                 latest)
        for topic in dict.fromkeys([*self.ghost_topics, cfg.trail.commanded_topic]):
            self.received[topic] = 0
            self.create_subscription(PoseStamped, topic, self._pose_callback(topic), latest)
        self.create_subscription(String, contract.SAFETY_STATE_TOPIC, self._on_safety,
                                 rosutil.SAFETY_QOS)
        self.create_subscription(DiagnosticArray, contract.NETWORK_STATS_TOPIC, self._on_stats,
                                 latest)
        diagnostics_in = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.create_subscription(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                 self._on_diagnostics, diagnostics_in)
        self.joy_pub = self.create_publisher(Joy, contract.JOY_TOPIC, QoSProfile(depth=1))
        self.diag_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              rosutil.DIAGNOSTICS_QOS)
        self.service_clients = {
            'estop': self.create_client(Trigger, contract.ESTOP_SERVICE),
            'reset': self.create_client(Trigger, contract.RESET_SERVICE),
            'blackout': self.create_client(SetBool, contract.BLACKOUT_SERVICE),
            'profile': self.create_client(SetParameters, f'{cfg.relay_node}/set_parameters'),
        }
        self.pending = []             # (deadline, future, label, describe)
        # What the keys asked the relay for, until its network/stats show it: a second key
        # press before the stats catch up toggles from the request, not from stale stats.
        self.requested = {'blackout': None, 'profile': None}
        self.messages = []            # (time, text, ok)
        self.last_action = ''

        self.tracker = viewer.KeyTracker()
        self.key_joy = viewer.KeyJoy()
        self.joy_published = 0
        self.joy_repeated = 0
        self.joy_neutral = True
        self.joy_lock = threading.Lock()
        self.joy_repeat = viewer.JoyRepeat(1.0 / cfg.joy_rate, cfg.joy_hold_timeout)
        self.joy_stop = threading.Event()
        self.joy_schedule = None
        if cfg.keys:
            threading.Thread(target=self._repeat_joy, name='joy-repeat', daemon=True).start()
        self.frames = viewer.FrameStats(cfg.fps)
        self.hud_every = viewer.Every(1.0 / cfg.hud_rate)
        self.trail_every = viewer.Every(1.0 / cfg.trail.rate)
        self.ghost_joints = [None] * len(self.ghost_topics)
        self.camera_every = viewer.Every(CAMERA_CHECK_PERIOD)
        self.hud_updates = 0
        self._hud_key = None
        self._warned_frames = set()
        self.started = time.monotonic()
        self.scene.set_panel('keys', self.keys_panel.render(viewer.key_help_lines(5)))
        self.scheduling = _set_priority(cfg.priority, cfg.autogroup_nice)
        self.create_timer(1.0 / cfg.fps, self._frame)
        self.create_timer(cfg.diagnostics_period, self._diagnostics)
        self._ghost_check = self.create_timer(cfg.ghost_timeout, self._check_ghosts)
        self.get_logger().info(
            f'{cfg.view} view of {self.topics["measured_js"]}, {cfg.fps:g} fps, camera '
            f'{self.camera}, ghosts {self.ghost_topics or "none"}, priority {cfg.priority} '
            f'({self.scheduling}); '
            + (f'keys publish {contract.JOY_TOPIC}' if cfg.keys else 'keys off (watch only)'))

    def _on_change(self, cfg, names):
        if 'camera' in names and cfg.camera != self.camera:
            self.camera = cfg.camera
            self.scene.set_camera(self.camera)
        if 'hud_rate' in names:
            self.hud_every = viewer.Every(1.0 / cfg.hud_rate)

    # --- inputs ---------------------------------------------------------------------------

    def _on_joints(self, msg):
        self.joints = (time.monotonic(), msg)

    def _pose_callback(self, topic):
        rcm = contract.frames(self.config.arm)['rcm']

        def on_pose(msg):
            if msg.header.frame_id and msg.header.frame_id != rcm:
                if topic not in self._warned_frames:
                    self._warned_frames.add(topic)
                    self.get_logger().warning(
                        f"ghost topic '{topic}': frame_id '{msg.header.frame_id}', expected "
                        f"'{rcm}': not drawn")
                return
            position, quaternion = rosutil.pose_to_arrays(msg.pose)
            if not all(math.isfinite(v) for v in (*position, *quaternion)):
                return
            if self.received[topic] == 0 and self._ghost_check is None:
                self.get_logger().info(f"ghost topic '{topic}': receiving poses")
            self.received[topic] += 1
            self.poses[topic] = (time.monotonic(), position, quaternion)
        return on_pose

    def _on_force(self, msg):
        f = msg.wrench.force
        self.force = math.sqrt(f.x * f.x + f.y * f.y + f.z * f.z)

    def _on_safety(self, msg):
        try:
            self.safety = contract.SafetyStatus.decode(msg.data)
        except ValueError as exc:
            self.get_logger().warning(f'ignoring safety/state: {exc}', throttle_duration_sec=5.0)

    def _on_stats(self, msg):
        for status in msg.status:
            direction = status.name.rsplit(':', 1)[-1].strip()
            self.stats[direction] = {kv.key: kv.value for kv in status.values}
        for key, shown in (('blackout', self._stats_blackout()),
                           ('profile', self._stats_profile())):
            if self.requested[key] == shown:
                self.requested[key] = None      # the relay's stats caught up with the request

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.hardware_id != self.config.arm:
                continue
            if status.name.endswith(': teleop'):
                self.teleop = {kv.key: kv.value for kv in status.values}
            elif status.name.endswith(': control loop'):
                self.loop = {kv.key: kv.value for kv in status.values}

    def _check_ghosts(self):
        """Once, ``ghost_timeout`` after the start: one line per ghost topic that sent nothing."""
        if self._ghost_check is None:
            return                    # an expiry queued before the timer was destroyed
        self.destroy_timer(self._ghost_check)
        self._ghost_check = None
        for topic in self.ghost_topics:
            if self.received[topic]:
                continue
            name = self.resolve_topic_name(topic)
            infos = self.get_publishers_info_by_topic(name)
            if not infos:
                self.get_logger().warning(
                    f"ghost topic '{topic}': no publisher after {self.config.ghost_timeout:g} "
                    's; nothing to draw (still listening)')
            else:
                types = sorted({i.topic_type for i in infos})
                self.get_logger().warning(
                    f"ghost topic '{topic}': {len(infos)} publisher(s) of {', '.join(types)} "
                    f'but no pose in {self.config.ghost_timeout:g} s (expected '
                    'geometry_msgs/msg/PoseStamped); still listening')

    # --- the frame ------------------------------------------------------------------------

    def _frame(self):
        start = time.monotonic()
        if not self.scene.connected():
            self.get_logger().info('the viewer window was closed: exiting')
            self.context.try_shutdown()
            return
        pressed = self.tracker.update(self.scene.keyboard_events())
        if self.config.keys:
            self._keys(pressed)
        self._check_pending(start)
        self._draw_arm()
        self._draw_ghosts(start)
        if self.rings and self.trail_every.due(start):
            self._trails(start)
        # The presets move the camera through us; the mouse can too: look now and then.
        moved = self.camera_every.due(start) and self.scene.place_panels()
        if self.hud_every.due(start) or moved:
            self._hud(start)
        self.frames.frame(start, time.monotonic())

    def _keys(self, pressed):
        joy = self.key_joy.update(self.tracker.active(pressed), pressed)
        with self.joy_lock:
            self.joy_repeat.polled(time.monotonic())
            if joy is not None:
                self._publish_joy(*joy)
        for action in viewer.actions(pressed):
            self._act(action)

    def _publish_joy(self, axes, buttons):
        msg = Joy(axes=[float(a) for a in axes], buttons=[int(b) for b in buttons])
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = 'joy'
        self.joy_pub.publish(msg)
        self.joy_published += 1
        self.joy_neutral = not (any(axes) or any(buttons))
        self.joy_repeat.published(time.monotonic(), axes, buttons)

    def _repeat_joy(self):
        """Thread: repeat a held key's Joy state between slow frames (core.viewer.JoyRepeat)."""
        # Out of SCHED_IDLE and above every autogroup: the operator's stream must not wait
        # for idle CPU. SCHED_FIFO 1 (the lowest) where permitted, else normal scheduling.
        self.joy_schedule = make_realtime(JOY_REPEAT_PRIORITY)
        if not self.joy_schedule.realtime:
            self.get_logger().warning(
                f'SCHED_FIFO {JOY_REPEAT_PRIORITY} for the key-repeat thread refused '
                f'({self.joy_schedule.refused}): it runs with normal scheduling')
            try:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        period = self.joy_repeat.period / 2.0
        while not self.joy_stop.wait(period):
            with self.joy_lock:
                joy = self.joy_repeat.due(time.monotonic())
                if joy is not None:
                    try:
                        self._publish_joy(*joy)
                    except Exception:  # noqa: B902 - the context is shutting down
                        return
                    self.joy_repeated += 1

    def _draw_arm(self):
        if self.joints is None or self.joints[1] is self.joints_drawn:
            return
        msg = self.joints[1]
        self.joints_drawn = msg
        self.scene.set_arm(viewer.urdf_joint_targets(msg.name, msg.position))

    def _arm_state(self):
        """Return the drawn arm's six joints and jaw (None before the first joint state)."""
        if self.joints_drawn is None:
            return None, 0.0
        values = dict(zip(self.joints_drawn.name, self.joints_drawn.position))
        if not all(n in values for n in kinematics.JOINT_NAMES):
            return None, 0.0
        return ([float(values[n]) for n in kinematics.JOINT_NAMES],
                float(values.get(kinematics.JAW_NAME, 0.0)))

    def _fresh_pose(self, topic, now):
        item = self.poses.get(topic)
        if item is None or now - item[0] > self.config.ghost_stale:
            return None
        return item

    def _draw_ghosts(self, now):
        _joints, jaw = self._arm_state()
        for i, topic in enumerate(self.ghost_topics):
            item = self._fresh_pose(topic, now)
            if item is None:
                self.scene.set_ghost(i, None)
                continue
            result = self.kin.ik(item[1], item[2], reference=self.ghost_joints[i])
            self.ghost_joints[i] = result.joints
            self.scene.set_ghost(i, viewer.arm_targets(result.joints, jaw))

    def _trails(self, now):
        commanded = self._fresh_pose(self.config.trail.commanded_topic, now)
        if commanded is not None:
            self.scene.move_bead(0, self.rings[0].push(), self.scene.world(commanded[1]))
        joints, _jaw = self._arm_state()
        if joints is not None and len(self.rings) > 1:
            tip, _rotation = self.kin.fk(joints)
            self.scene.move_bead(1, self.rings[1].push(), self.scene.world(tip))

    # --- actions --------------------------------------------------------------------------

    def _message(self, text, ok):
        self.messages.append((time.monotonic(), text, ok))
        self.messages = self.messages[-MESSAGES_SHOWN:]
        self.last_action = text
        # Two call sites: rclpy refuses one call site that logs at two severities.
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)
        self._hud_key = None          # show it at the next HUD refresh

    def _act(self, action):
        if action == 'camera':
            index = viewer.CAMERAS.index(self.camera)
            self.camera = viewer.CAMERAS[(index + 1) % len(viewer.CAMERAS)]
            self.scene.set_camera(self.camera)
            self._message(f'camera: {self.camera}', True)
        elif action == 'estop':
            self._call('estop', contract.ESTOP_SERVICE, Trigger.Request(), 'e-stop')
        elif action == 'reset':
            self._call('reset', contract.RESET_SERVICE, Trigger.Request(), 'reset')
        elif action == 'blackout':
            on = not self._blackout()
            if self._call('blackout', contract.BLACKOUT_SERVICE, SetBool.Request(data=on),
                          f'blackout {"on" if on else "off"}'):
                self.requested['blackout'] = on
        else:
            step = 1 if action == 'profile_next' else -1
            name = viewer.cycle(self.profiles, self._profile(), step)
            value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=name)
            request = SetParameters.Request(parameters=[ParameterMsg(name='profile',
                                                                     value=value)])
            if self._call('profile', f'{self.config.relay_node}/set_parameters', request,
                          f'profile {name}'):
                self.requested['profile'] = name

    def _call(self, key, service, request, label):
        client = self.service_clients[key]
        if not client.service_is_ready():
            self._message(f'{label}: service {service} is not available', False)
            return False
        future = client.call_async(request)
        self.pending.append((time.monotonic() + self.config.service_timeout, future, key,
                             label))
        return True

    def _check_pending(self, now):
        still = []
        for deadline, future, key, label in self.pending:
            if future.done():
                self._answered(key, label, future)
            elif now > deadline:
                self.service_clients[key].remove_pending_request(future)
                self.requested[key] = None
                self._message(f'{label}: no answer within {self.config.service_timeout:g} s',
                              False)
            else:
                still.append((deadline, future, key, label))
        self.pending = still

    def _answered(self, key, label, future):
        try:
            response = future.result()
        except Exception as exc:  # noqa: B902 - a failed call is reported, never raised
            self._message(f'{label}: call failed: {exc}', False)
            self.requested[key] = None
            return
        if key == 'profile':
            result = response.results[0] if response.results else None
            ok = bool(result and result.successful)
            if not ok:
                self.requested[key] = None
            self._message(f'{label}: ' + ('set' if ok else 'refused: ' + (
                result.reason if result else 'no result')), ok)
            return
        ok = bool(response.success)
        if not ok and key in self.requested:
            self.requested[key] = None
        prefix = f'{label} refused' if not ok else label
        self._message(f'{prefix}: {response.message}', ok)

    def _stats_blackout(self):
        return any(v.get('blackout') == 'True' for v in self.stats.values())

    def _stats_profile(self):
        for values in self.stats.values():
            if values.get('profile'):
                return values['profile']
        return None

    def _blackout(self):
        wanted = self.requested['blackout']
        return self._stats_blackout() if wanted is None else wanted

    def _profile(self):
        wanted = self.requested['profile']
        return self._stats_profile() if wanted is None else wanted

    # --- HUD and diagnostics --------------------------------------------------------------

    def _figure(self, values, key):
        try:
            value = float(values[key])
        except (KeyError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def _ghost_infos(self, now):
        infos = []
        for i, topic in enumerate(self.ghost_topics):
            item = self.poses.get(topic)
            age = None if item is None else now - item[0]
            publishers = self.count_publishers(self.resolve_topic_name(topic)) \
                if not self.received[topic] else 1
            infos.append(viewer.GhostInfo(topic, viewer.GHOST_COLOURS[i], viewer.ghost_status(
                self.received[topic], age, publishers, self.config.ghost_stale)))
        return infos

    def hud_inputs(self, now):
        physics = self._figure(self.loop, 'physics_rate_hz')
        nominal = self._figure(self.loop, 'nominal_rate_hz')
        return viewer.HudInputs(
            view=self.config.view, camera=self.camera, profile=self._stats_profile(),
            blackout=self._stats_blackout(),
            outage=any(v.get('outage') == 'True' for v in self.stats.values()),
            rtt_p50_ms=self._figure(self.teleop, 'rtt_p50_ms'),
            delay_ms={d: self._figure(v, 'delay_p50_ms') for d, v in self.stats.items()},
            loss={d: self._figure(v, 'loss_ratio') for d, v in self.stats.items()},
            safety=self.safety, force_n=self.force, scale=self._figure(self.teleop, 'scale'),
            physics_percent=None if physics is None or not nominal else
            100.0 * physics / nominal,
            fps=self.frames.fps(now), fps_target=self.config.fps,
            clutch=self.key_joy.clutch, ghosts=self._ghost_infos(now),
            messages=[(now - t, text, ok) for t, text, ok in self.messages
                      if now - t < MESSAGE_LIFETIME])

    def _hud(self, now):
        hud = self.hud_inputs(now)
        lines = viewer.hud_lines(hud)
        key = tuple(lines)
        if key == self._hud_key:
            return
        self._hud_key = key
        accent = viewer.STATE_COLOURS.get(hud.safety.state) if hud.safety else None
        self.scene.set_panel('status', self.status_panel.render(lines, accent=accent))
        self.hud_updates += 1

    def _diagnostics(self):
        now = time.monotonic()
        fps = self.frames.fps(now)
        age = None if self.joints is None else now - self.joints[0]
        p50, p99 = self.frames.frame_time(50), self.frames.frame_time(99)
        values = {
            'fps': math.nan if fps is None else fps, 'fps_target': self.config.fps,
            'frames': self.frames.frames, 'frames_dropped': self.frames.dropped,
            'frame_time_p50_ms': math.nan if p50 is None else p50 * 1e3,
            'frame_time_p99_ms': math.nan if p99 is None else p99 * 1e3,
            'hud_updates': self.hud_updates, 'view': self.config.view,
            'camera': self.camera, 'joint_state_age_ms': math.nan if age is None else age * 1e3,
            'ghosts': '; '.join(f'{g.topic}: {g.status}' for g in self._ghost_infos(now)),
            'joy_published': self.joy_published, 'joy_repeated': self.joy_repeated,
            'joy_scheduling': self.joy_schedule.describe() if self.joy_schedule else 'off',
            'clutch': self.key_joy.clutch,
            'last_action': self.last_action, 'scheduling': self.scheduling,
        }
        if age is None or age > 1.0:
            level, message = 'WARN', f'no fresh joint states on {self.topics["measured_js"]}'
        elif fps is None or fps < 0.5 * self.config.fps:
            level, message = 'WARN', ('slow: ' + ('-' if fps is None else f'{fps:.1f}')
                                      + f' of {self.config.fps:g} fps')
        else:
            level, message = 'OK', f'{fps:.1f} fps'
        status = rosutil.diagnostic_status(f'{self.get_name()}: render', self.config.arm,
                                           level, message, values)
        self.diag_pub.publish(rosutil.diagnostic_array(self, [status]))

    def on_shutdown(self):
        """Release the keys (the hand stops at once), then close the window."""
        self.joy_stop.set()
        try:
            if self.config.keys and not self.joy_neutral:
                with self.joy_lock:
                    for _ in range(3):
                        self._publish_joy(*viewer.KeyJoy().state(()))
                time.sleep(0.05)
        except Exception as exc:  # noqa: B902 - the context may already be shut down
            self.get_logger().warning(f'could not release the keys: {exc}')
        self.scene.close()


def main(args=None):
    _set_priority('idle')
    sys.exit(run_node(ArmViewer, args))


if __name__ == '__main__':
    main()
