"""One measurement: start processes, wait until data flows, record a window, stop, load."""
from telesurgery_ros.bench.stack import Recording, Window


class Measurement:
    """The outcome of :func:`measure`: the recording, the window and CPU use per process."""

    def __init__(self, recording, window, cpu, exit_codes, threads=None):
        self.recording = recording
        self.window = window
        self.cpu = cpu                         # {process name: % of one core}
        self.threads = threads or {}           # {process name: {thread group: % of a core}}
        self.exit_codes = exit_codes

    def latency(self, topic):
        return self.recording.latency(topic, self.window.span)

    def stream(self, topic):
        return self.recording.stream(topic, self.window.span)


def measure(ctx, label, start, topics, seconds, warmup=1.0, ready_timeout=60.0,
            sink_options=None, during=None, fail_on_estop=True):
    """
    Run ``start(stack)``, record ``topics`` for ``seconds`` after ``warmup``; return it.

    ``start`` starts the processes under test; a sink is added that records ``topics`` (and
    what ``sink_options`` asks for). The window opens once every topic has delivered and
    ``warmup`` has passed. ``during(stack)`` is called right after the window opened. With
    ``fail_on_estop``, a watchdog latching ESTOP before the window opens is a failure.
    """
    from telesurgery_ros.bench.stats import cpu_percent, thread_cpu_percent
    window = Window()
    with ctx.stack(label) as stack:
        stack.fail_on_estop = fail_on_estop
        start(stack)
        sink, prefix = stack.sink(topics, **(sink_options or {}))
        stack.wait_receiving(sink, topics, timeout=ready_timeout)
        stack.hold(warmup)
        before = stack.cpu_snapshot()
        threads_before = stack.thread_snapshot()
        window.begin()
        if during is not None:
            during(stack)
        stack.hold(seconds)
        after = stack.cpu_snapshot()
        threads_after = stack.thread_snapshot()
        window.finish()
        cpu = cpu_percent(before, after, window.seconds)
        threads = thread_cpu_percent(threads_before, threads_after, window.seconds)
        codes = stack.stop_all()
    return Measurement(Recording(prefix), window, cpu, codes, threads)
