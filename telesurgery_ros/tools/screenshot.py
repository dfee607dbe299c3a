r"""
Screenshots of the viewer from a real run: the stack, the arm_viewer window, keys typed in.

It starts ``teleop_launch.yaml gui:=true`` (scripted circle, ``--profile``, default
``rome_beijing_2024``) in a private ROS domain, waits until the arm moves under NOMINAL/DEGRADED
with the hand ghost live and the trails filled, then grabs the real window:

- ``viewer.png``: the endoscope camera with the ghost, the trails and the HUD;
- ``viewer_overview.png``: after the ``v`` key, the overview camera;
- ``viewer.gif``: a few seconds of the endoscope view (Pillow), at a reduced size;
- ``viewer_estop.png``: after the ``x`` key (the e-stop), the HUD in ESTOP.

Rerun it on a desktop, under ``xvfb-run``, or with no display at all (it then starts a private
Xvfb)::

    xvfb-run -a -s '-screen 0 1280x800x24' .venv/bin/python -m telesurgery_ros.tools.screenshot
    .venv/bin/python -m telesurgery_ros.tools.screenshot --out doc

Needs the system packages xvfb (headless), libgl1-mesa-dri and xdotool (the keys).
"""
import argparse
import os
import sys
import threading
import time

from telesurgery_ros import resources, xdisplay
from telesurgery_ros.procman import ManagedProcess

WINDOW = 'Bullet Physics'


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--out', default='doc', help='folder for the images (default doc)')
    parser.add_argument('--profile', default='rome_beijing_2024', help='network profile')
    parser.add_argument('--gif-seconds', type=float, default=4.0,
                        help='length of the GIF (default 4 s; 0: no GIF)')
    parser.add_argument('--gif-width', type=int, default=640, help='GIF width in pixels')
    parser.add_argument('--ready-timeout', type=float, default=120.0)
    return parser


class Watch:
    """The safety state and the viewer's render status, from a node in this process."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String
        from telesurgery_ros.core.contract import SafetyStatus
        from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, SAFETY_QOS
        rclpy.init(args=[])
        self._decode = SafetyStatus.decode
        self.node = rclpy.create_node('viewer_screenshot')
        self.state = None
        self.render = {}
        self.node.create_subscription(String, 'safety/state', self._on_state, SAFETY_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      DIAGNOSTICS_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_state(self, msg):
        try:
            self.state = self._decode(msg.data)
        except ValueError:
            pass

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.endswith(': render'):
                self.render = {kv.key: kv.value for kv in status.values}

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def wait(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.2)


def save(image, path):
    image.convert('RGB').save(path, optimize=True)
    print(f'saved {path} ({image.width}x{image.height}, {os.path.getsize(path) // 1024} KiB)',
          flush=True)


def main(argv=None):
    options = build_parser().parse_args(argv)
    os.makedirs(options.out, exist_ok=True)
    from telesurgery_ros.domain import isolate
    isolate(os.environ)
    server = None
    if xdisplay.check_display():
        server = xdisplay.Xvfb()
        os.environ['DISPLAY'] = server.start()
        print(f'no usable display: private Xvfb {os.environ["DISPLAY"]}', flush=True)
    display = os.environ['DISPLAY']
    problem = xdisplay.check_display(display)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    launch = os.path.join(resources.share_directory(), 'launch', 'teleop_launch.yaml')
    log_lines = []
    stack = ManagedProcess('launch', [sys.executable, '-m', 'telesurgery_ros.launch_runner',
                                      '--embedded', launch, 'gui:=true',
                                      f'profile:={options.profile}'],
                           env={**os.environ, 'PYTHONUNBUFFERED': '1'},
                           sink=lambda _n, line: log_lines.append(line))
    watch = Watch()
    try:
        stack.start()
        wait('the arm under control and the viewer drawing',
             lambda: (watch.state is not None and watch.state.state.allows_motion
                      and 'servo_cp: live' in watch.render.get('ghosts', '')
                      and float(watch.render.get('fps', 'nan')) > 0) or not stack.running(),
             options.ready_timeout)
        if not stack.running():
            raise RuntimeError('the launch ended:\n' + ''.join(log_lines[-20:]))
        window = xdisplay.find_window(display, WINDOW, timeout=30.0)
        if window is None:
            raise RuntimeError(f'no "{WINDOW}" window on {display}')
        box = window[1:]
        keys = xdisplay.Keyboard(display, window[0])
        keys.focus()
        time.sleep(4.0)                       # the trails fill (3 s of them)
        print(f"viewer at {watch.render.get('fps')} fps, state {watch.state.encode()}",
              flush=True)
        save(xdisplay.grab(display, box), os.path.join(options.out, 'viewer.png'))
        if options.gif_seconds > 0:
            frames = []
            end = time.monotonic() + options.gif_seconds
            while time.monotonic() < end:
                image = xdisplay.grab(display, box)
                height = round(image.height * options.gif_width / image.width)
                frames.append(image.convert('RGB').resize((options.gif_width, height)))
                time.sleep(0.2)
            path = os.path.join(options.out, 'viewer.gif')
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=200,
                           loop=0, optimize=True)
            print(f'saved {path} ({len(frames)} frames, {os.path.getsize(path) // 1024} KiB)',
                  flush=True)
        keys.tap('v')
        time.sleep(3.0)
        save(xdisplay.grab(display, box), os.path.join(options.out, 'viewer_overview.png'))
        keys.tap('v')
        time.sleep(1.0)
        keys.tap('x')
        wait('ESTOP after the x key', lambda: watch.state.state.name == 'ESTOP', 15.0)
        time.sleep(2.0)                       # the HUD shows it at its next refresh
        save(xdisplay.grab(display, box), os.path.join(options.out, 'viewer_estop.png'))
    except RuntimeError as exc:
        print(f'screenshot: {exc}', file=sys.stderr)
        return 1
    finally:
        stack.stop(sigint_timeout=20.0)
        watch.close()
        if server is not None:
            server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
