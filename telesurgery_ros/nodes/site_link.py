"""
site_link: one site's end of the authenticated, encrypted link between two DDS domains.

One runs at each site (``role: surgeon`` or ``role: patient``) and joins the site's DDS
domain to a Zenoh session: the patient link listens on ``link_endpoint``, the surgeon link
connects to it, both with mutual TLS and the deployment's certificates (``certs``), and
Zenoh's access control (default deny) lets the surgeon put only commands and the patient
only feedback, safety state and statistics. Samples are the raw CDR bytes of the DDS
messages, unchanged; each carries a session id and a sequence number in its attachment, and
the receiving link drops and counts replays (:mod:`telesurgery_ros.core.link`).

The patient link also emulates the long-distance network as network_relay does (``profile``,
``overrides``, ``seed``, ``blackout``, service ``network/blackout``), on both directions,
and reports it on ``network/stats`` and ``/diagnostics`` (``site_link: forward`` and
``site_link: backward``) with the link's own status (``site_link: link``: peer identity,
connection state, replay drops, refused peers). Liveliness tokens and a lease of at most
1 s detect the other site going away: the patient link then drops what is in flight and
sends no stale feedback; the surgeon link says ``HOLD`` on its side's ``safety/state``
until the patient site is back. See doc/link.md.
"""
import json
import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from telesurgery_ros.core import contract, link, link_tls
from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.core.realtime import make_receive_realtime, shorten_gil_switch
from telesurgery_ros.core.scheduler import ReleaseScheduler
from telesurgery_ros.emulation import DIRECTIONS, Emulation, PARAMETERS as EMULATION
from telesurgery_ros.rosutil import (
    declare_parameters, diagnostic_array, diagnostic_status, DIAGNOSTICS_QOS, run_node,
    SAFETY_QOS)

MESSAGE_TYPES = {link.POSE: PoseStamped, link.WRENCH: WrenchStamped, link.JOINTS: JointState,
                 link.STRING: String, link.DIAGNOSTICS: DiagnosticArray}
# Zenoh's warnings, its access-control notices, and its failed connect attempts (debug in
# zenoh 1.10: relayed as one warning per reason); the gossip warning of peer mode is noise.
DEFAULT_ZENOH_LOG = ('warn,zenoh::net::routing::hat::peer=error,'
                     'zenoh::net::routing::interceptor::access_control=info,'
                     'zenoh::net::runtime::orchestrator=debug')

COMMON_PARAMETERS = (
    Param('role', 'patient', "this site: 'patient' listens on link_endpoint and emulates the "
          "network, 'surgeon' connects to it", choices=link.ROLES, read_only=True),
    Param('link_endpoint', link_tls.DEFAULT_ENDPOINT,
          "Zenoh locator '<protocol>/<host>:<port>': where the patient link listens (e.g. "
          'tls/0.0.0.0:7447 on every interface) and the surgeon link connects (e.g. '
          'tls/patient.example.org:7447)', read_only=True),
    Param('link_namespace', link.DEFAULT_NAMESPACE,
          "prefix of the Zenoh keys ('<link_namespace>/<ROS name>', the "
          'zenoh-bridge-ros2dds scheme); both sites must use the same', read_only=True,
          check=link.check_namespace),
    Param('certs', '', "directory with ca.pem and this site's certificate and key "
          '(surgeon-console.pem/.key or patient-site.pem/.key, made by telesurgery-certs); '
          'empty = $ROS_HOME/telesurgery_certs (ROS_HOME defaults to ~/.ros)', read_only=True),
    Param('tls.ca_file', '', "CA certificate file; empty = '<certs>/ca.pem'", read_only=True),
    Param('tls.cert_file', '', "this site's certificate; empty = '<certs>/<CN>.pem'",
          read_only=True),
    Param('tls.key_file', '', "this site's private key; empty = '<certs>/<CN>.key'",
          read_only=True),
    Param('insecure', False, 'plain TCP without authentication or encryption, for tests on '
          'loopback only (refused for any other endpoint; needs a tcp/ link_endpoint)',
          read_only=True),
    Param('lease', 1.0, 'Zenoh lease announced to the peer: the other site declares this one '
          'gone after this long without traffic or keep-alive', 's', low=0.2, high=1.0,
          read_only=True),
    Param('arm', contract.DEFAULT_ARM, 'arm namespace of the carried topics', read_only=True),
    Param('qos.depth', 100, 'queue depth of the DDS subscriptions of the streams', 'messages',
          low=1, high=10000, read_only=True),
    Param('realtime_priority', 45,
          'SCHED_FIFO priority of the executor thread, of the DDS receive threads, of the '
          "Zenoh threads it starts and of the patient link's release thread, used where the "
          'system permits it (root or '
          'CAP_SYS_NICE; refused: one warning, normal scheduling); 0: normal scheduling; '
          "as network_relay's release thread, below the slave's control loop (50)",
          low=0, high=98, read_only=True),
    Param('zenoh_log', DEFAULT_ZENOH_LOG, "Zenoh's log filter (RUST_LOG syntax; a RUST_LOG "
          "environment variable wins); its lines are relayed into this node's log",
          read_only=True),
)
_STATS_RATE = tuple(p for p in EMULATION if p.name == 'stats_rate')
SURGEON_PARAMETERS = COMMON_PARAMETERS + _STATS_RATE
PATIENT_PARAMETERS = COMMON_PARAMETERS + EMULATION


def _stream_qos(kind, depth):
    if kind == link.STATE:
        return SAFETY_QOS
    if kind == link.STATS:
        return DIAGNOSTICS_QOS
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


class ZenohLog:
    """
    Zenoh's own log (Rust, written to fd 1) relayed line by line into the node's logger.

    Lines that report a refused TLS handshake are handed to ``on_refusal(reason)``, lines
    that are not Zenoh's pass through to the real standard output unchanged.
    """

    _LEVELS = {'ERROR': 'error', 'WARN': 'warning', 'INFO': 'info', 'DEBUG': 'debug',
               'TRACE': 'debug'}

    def __init__(self, logger, on_refusal, on_unmatched, on_connect_failed):
        """Redirect fd 1 through a pipe read by a thread."""
        self._logger = logger
        self._on_refusal = on_refusal
        self._on_unmatched = on_unmatched
        self._on_connect_failed = on_connect_failed
        sys.stdout.flush()
        self._stdout = os.dup(1)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, 'r', errors='replace')
        self._thread = threading.Thread(target=self._run, name='zenoh-log', daemon=True)
        self._thread.start()

    def _run(self):
        for line in self._reader:
            parsed = link.parse_zenoh_log(line)
            if parsed is None:
                os.write(self._stdout, line.encode())
                continue
            level, target, message = parsed
            try:
                refusal = link.handshake_refusal(target, message)
                if refusal is not None:
                    self._on_refusal(*refusal)
                    continue
                failure = link.connect_failure(target, message)
                if failure is not None:
                    self._on_connect_failed(*failure)
                    continue
                zid = link.acl_unmatched_zid(target, message)
                if zid is not None:
                    self._on_unmatched(zid)
                getattr(self._logger, self._LEVELS[level])(f'zenoh: {target}: {message}')
            except Exception:      # noqa: B902 - never lose the log over one bad line
                os.write(self._stdout, line.encode())

    def close(self):
        """Give fd 1 back (the reader thread ends when the pipe closes)."""
        sys.stdout.flush()
        os.dup2(self._stdout, 1)
        os.close(self._stdout)


class SiteLink(Node):
    """One site's end of the Zenoh link (see the module docstring)."""

    def __init__(self):
        super().__init__('site_link')
        # Zenoh's threads, the executor and the release thread share the GIL: a short switch
        # interval bounds how long one holds it while another waits with a message (as
        # network_relay does).
        shorten_gil_switch()
        overrides = getattr(self, '_parameter_overrides', {})
        given_role = overrides.get('role')
        role = given_role.value if given_role is not None else 'patient'
        patient = role == 'patient'
        table = PATIENT_PARAMETERS if patient else SURGEON_PARAMETERS
        self.emulation = Emulation(self) if patient else None
        self.config = declare_parameters(self, table, on_change=self._on_change,
                                         cross_check=self._cross_check,
                                         explain_unknown=self._explain_unknown)
        cfg = self.config
        self.role = cfg.role
        self.endpoint, problems = link_tls.check_endpoint(cfg.link_endpoint, cfg.insecure)
        if problems:
            raise ConfigError(problems)
        self.credentials = self._credentials(cfg)
        self.peer_role = link.PEER_ROLE[self.role]
        self.own_cn = self.credentials.common_name if self.credentials else ''
        self._lock = threading.Lock()
        self.peer = link.PeerMonitor(
            '' if cfg.insecure else link_tls.ROLE_NAMES[self.peer_role])
        self.session_id = link.new_session_id()
        self.sequencer = link.Sequencer(self.session_id)
        self.guard = link.ReplayGuard(on_new_session=self._on_new_peer_session)
        self.counts = {'sent': 0, 'received': 0, 'held_back': 0, 'refused_handshakes': 0,
                       'refused_by_peer': 0, 'connect_failures': 0, 'publish_errors': 0}
        self._repeats = link.Repeats(period=10.0)
        self._refusals = []
        self._pending_transports = {}
        self._same_domain = False
        self._stale_warned = False
        self.streams = link.streams(cfg.arm, cfg.link_namespace)
        self.outgoing = [s for s in self.streams if s.sender == self.role]
        self.incoming = [s for s in self.streams if s.sender != self.role]
        self._by_key = {s.key: s for s in self.incoming}

        if cfg.insecure:
            self.get_logger().warning(
                f'INSECURE: plain TCP on {self.endpoint}, no authentication and no '
                'encryption, no access control by identity; for tests on loopback only')
        # Real time first: the release thread and Zenoh's threads inherit nothing from a
        # thread still under normal scheduling, and a release thread below its own process's
        # real-time threads would be starved by them (late, bunched commands). The DDS receive
        # threads exist already (the participant started them): they are set here too, or
        # every sample from the local domain would wait for a core behind all the real-time
        # threads of the machine, this link's own included.
        self.schedule, threads = make_receive_realtime(cfg.realtime_priority)
        if cfg.realtime_priority > 0 and not self.schedule.realtime:
            self.get_logger().warning(
                f'realtime_priority {cfg.realtime_priority} refused ({self.schedule.refused}): '
                'the link runs with normal scheduling')
        elif self.schedule.realtime:
            self.get_logger().info(f'executor, DDS receive and Zenoh threads: '
                                   f'{self.schedule.describe()} ({threads} threads before '
                                   'Zenoh started)')
        else:
            self.get_logger().info(f'executor and Zenoh threads: {self.schedule.describe()}')
        if patient:
            self.emulation.start(cfg)
            self._scheduler = ReleaseScheduler(self._release, on_error=self._release_failed,
                                               priority=cfg.realtime_priority).start()
            self.emulation.scheduler = self._scheduler
            self.create_service(SetBool, contract.BLACKOUT_SERVICE,
                                self.emulation.on_blackout_service)
            self._stats_pub = self.create_publisher(DiagnosticArray,
                                                    contract.NETWORK_STATS_TOPIC,
                                                    DIAGNOSTICS_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                               DIAGNOSTICS_QOS)
        # DDS: what this site receives from the other is published here ...
        self.publishers_by_key = {
            s.key: self.create_publisher(MESSAGE_TYPES[s.type_name], s.target,
                                         _stream_qos(s.kind, 10)) for s in self.incoming}
        # ... and what this site sends is read here, raw (the CDR bytes, unchanged).
        self._subscriptions = [
            self.create_subscription(MESSAGE_TYPES[s.type_name], s.source,
                                     lambda data, s=s: self._on_dds(s, data),
                                     _stream_qos(s.kind, cfg.qos.depth), raw=True)
            for s in self.outgoing]

        self._zenoh_log = None
        if not patient:
            self._publish_local_state('waiting for the patient site')
        self._open_zenoh(cfg)
        self._stats_timer = self.create_timer(1.0 / cfg.stats_rate, self._publish_stats)
        self._graph_timer = self.create_timer(1.0, self._check_graph)
        self._token_timer = self.create_timer(0.1, self._poll_transports)
        security = ('INSECURE plain TCP' if cfg.insecure else
                    f"mutual TLS as '{self.own_cn}', CA {self.credentials.ca_file}")
        action = 'listening on' if patient else 'connecting to'
        self.get_logger().info(
            f'{self.role} link {action} {self.endpoint} ({security}); keys '
            f'{cfg.link_namespace}/..., lease {cfg.lease:g} s, session '
            f'{self.session_id.hex()[:16]}...')
        for s in self.outgoing:
            self.get_logger().info(f'sends {s.source} -> {s.key} ({s.kind})')
        for s in self.incoming:
            self.get_logger().info(f'receives {s.key} -> {s.target} ({s.kind})')

    # --- configuration ------------------------------------------------------------------

    def _cross_check(self, cfg):
        return self.emulation.check(cfg) if self.emulation is not None else []

    def _on_change(self, cfg, names):
        if self.emulation is not None:
            self.emulation.on_change(cfg, names)
        if 'stats_rate' in names:
            self._stats_timer.cancel()
            self.destroy_timer(self._stats_timer)
            self._stats_timer = self.create_timer(1.0 / cfg.stats_rate, self._publish_stats)

    @staticmethod
    def _explain_unknown(name):
        if name in {p.name for p in EMULATION}:
            return (f"parameter '{name}': only the patient link emulates the network (this "
                    'link has role surgeon)')
        return None

    def _credentials(self, cfg):
        if cfg.insecure:
            return None
        certs = cfg.certs or link_tls.default_certs_dir()
        paths = link_tls.credential_paths(cfg.role, certs, cfg.tls.ca_file, cfg.tls.cert_file,
                                          cfg.tls.key_file)
        try:
            return link_tls.load_credentials(cfg.role, *paths)
        except link_tls.CredentialError as exc:
            raise ConfigError(exc.problems) from None

    # --- Zenoh ----------------------------------------------------------------------------

    def _open_zenoh(self, cfg):
        import zenoh
        self._zenoh = zenoh
        self._zenoh_log = ZenohLog(self.get_logger(), self._on_handshake_refused,
                                   self._on_acl_unmatched, self._on_connect_failed)
        try:
            zenoh.init_log_from_env_or(cfg.zenoh_log)
        except Exception as exc:    # noqa: B902 - zenoh raises its own error types
            raise ConfigError([f"parameter 'zenoh_log': {exc}"]) from None
        settings = link_tls.zenoh_config(self.role, self.endpoint, self.credentials,
                                         cfg.link_namespace, cfg.arm, cfg.lease)
        try:
            self.session = zenoh.open(zenoh.Config.from_json5(json.dumps(settings)))
        except zenoh.ZError as exc:
            what = 'cannot listen on' if self.role == 'patient' else 'cannot connect to'
            raise ConfigError([f"parameter 'link_endpoint': {what} {self.endpoint}: "
                               f'{exc}']) from None
        self.zenoh_publishers = {
            s.key: self.session.declare_publisher(s.key, **link_tls.publisher_qos(zenoh, s.kind))
            for s in self.outgoing}
        self.zenoh_subscribers = [
            self.session.declare_subscriber(s.key, self._on_zenoh,
                                            allowed_origin=zenoh.Locality.REMOTE)
            for s in self.incoming]
        ns = cfg.link_namespace
        self.token = self.session.liveliness().declare_token(
            link.token_key(ns, self.role, self.session_id.hex()))
        self._token_prefix = link.token_key(ns, self.peer_role, '')
        self.peer_tokens = self.session.liveliness().declare_subscriber(
            link.token_key(ns, self.peer_role), self._on_token, history=True)
        self._transport_events = self.session.info.declare_transport_events_listener(
            history=True)

    def _on_token(self, sample):
        session_hex = str(sample.key_expr)[len(self._token_prefix):]
        alive = sample.kind == self._zenoh.SampleKind.PUT
        with self._lock:
            state = self.peer.token(session_hex, alive)
            sessions = len(self.peer.tokens)
        if alive:
            self.get_logger().info(f'{self.peer_role} link session {session_hex[:16]}... '
                                   'announced')
            if sessions > 1:
                self.get_logger().warning(
                    f'{sessions} {self.peer_role} links are connected: only the newest '
                    'session is accepted, the others are dropped as stale')
        if state == link.CONNECTED:
            self.get_logger().info(f'{self.peer_role} site connected')
        elif state == link.LOST:
            self._on_peer_lost()

    def _on_peer_lost(self):
        self.get_logger().error(
            f'{self.peer_role} site lost: its link went away or was silent for the lease '
            f'({self.config.lease:g} s)')
        if self.emulation is not None:
            dropped = self.emulation.discard_in_flight('outage')
            self.get_logger().warning(f'dropped {dropped} message(s) in flight; no feedback '
                                      'is sent until the surgeon site is back')
        else:
            self._publish_local_state('no link to the patient site')

    def _poll_transports(self):
        """Name every new Zenoh transport's peer (its certificate CN); log refused ones."""
        while True:
            event = self._transport_events.try_recv()
            if event is None:
                break
            zid = str(event.transport.zid)
            if event.kind == self._zenoh.SampleKind.DELETE:
                self._pending_transports.pop(zid, None)
                with self._lock:
                    self.peer.transport_closed(zid)
            else:
                self._pending_transports[zid] = time.monotonic()
        if self._pending_transports:
            links = {str(item.zid): item for item in self.session.info.links()}
            for zid, since in list(self._pending_transports.items()):
                item = links.get(zid)
                if item is None and time.monotonic() - since < 2.0:
                    continue            # its link is not listed yet: look again next time
                del self._pending_transports[zid]
                cn = (item.auth_identifier or '') if item is not None else ''
                address = item.dst if item is not None else '?'
                self._name_transport(zid, cn, address)
        self._report_refusals()

    def _name_transport(self, zid, cn, address):
        with self._lock:
            authorized = self.peer.transport_opened(zid, cn, address)
        if authorized:
            self.get_logger().info(f'peer {zid} at {address} authenticated as '
                                   f"'{cn or 'no certificate (insecure)'}'")
        else:
            self.get_logger().warning(
                f"refused peer {zid} at {address}: certificate CN '{cn or '(none)'}' is not "
                f"'{self.peer.expected_cn}'; the access control denies everything it sends")

    def _on_handshake_refused(self, who, reason):
        with self._lock:
            if who == 'peer':
                self.counts['refused_handshakes'] += 1
            else:
                self.counts['refused_by_peer'] += 1
            self._refusals.append((who, reason))

    def _on_connect_failed(self, endpoint, reason):
        hint = ''
        if 'certificate' in reason:
            hint = (' (is it the patient site of this deployment, with a certificate naming '
                    'the host in link_endpoint? see telesurgery-certs --host)')
        with self._lock:
            self.counts['connect_failures'] += 1
            text = self._repeats.say(f'cannot connect to {endpoint}: {reason}{hint}; retrying')
        if text:                    # Zenoh retries every second: once per reason and 10 s
            self.get_logger().warning(text)

    def _on_acl_unmatched(self, zid):
        self.get_logger().info(f'zenoh access control: peer {zid} matches no allowed '
                               'identity: default deny applies to everything it sends')

    def _report_refusals(self):
        """Log the refused TLS handshakes that Zenoh's log reported."""
        with self._lock:
            refusals, self._refusals = self._refusals, []
        for who, reason in refusals:
            if who == 'peer':
                text = (f'refused a TLS connection on {self.endpoint}: {reason} (the peer '
                        'proved no identity of this deployment; Zenoh 1.10 does not report '
                        'its address)')
            else:
                text = (f'a peer aborted the TLS handshake on {self.endpoint}: {reason}: it '
                        "did not accept this site's certificate (a peer of another CA, or one "
                        'that connected by a host name or address the certificate does not '
                        'name)')
            with self._lock:
                text = self._repeats.say(text)
            if text:
                self.get_logger().warning(text)

    # --- the data path --------------------------------------------------------------------

    def _on_dds(self, stream, data):
        """Send a DDS message to the other site: emulated (patient) or at once (surgeon)."""
        if self._same_domain and stream.kind in (link.STATE, link.STATS):
            return
        if self.emulation is not None:
            if self.peer.connection != link.CONNECTED:
                self.counts['held_back'] += 1
                return
            if stream.emulated:
                self.emulation.submit('backward', (stream, data), len(data), stream.key)
                return
        self._put(stream, data)

    def _put(self, stream, data):
        with self._lock:
            attachment = self.sequencer.attachment(stream.key)
        self.zenoh_publishers[stream.key].put(data, attachment=attachment)
        self.counts['sent'] += 1

    def _on_zenoh(self, sample):
        """Take a sample from the other site: replay check, then emulate or publish."""
        key = str(sample.key_expr)
        stream = self._by_key.get(key)
        if stream is None:
            return
        attachment = sample.attachment
        with self._lock:
            verdict = self.guard.check(key, None if attachment is None else
                                       attachment.to_bytes())
        if verdict != link.ACCEPTED:
            self._on_replay_drop(key, verdict)
            return
        data = sample.payload.to_bytes()
        self.counts['received'] += 1
        if self.emulation is not None and stream.emulated:
            self.emulation.submit('forward', (stream, data), len(data), stream.key)
        else:
            self._publish_dds(stream, data)

    def _publish_dds(self, stream, data):
        self.publishers_by_key[stream.key].publish(data)

    def _release(self, item):
        """Deliver a message leaving the emulation: to DDS (forward) or Zenoh (backward)."""
        stream, data = item[0]
        if stream.direction == 'forward':
            self._publish_dds(stream, data)
        elif self.peer.connection == link.CONNECTED:
            self._put(stream, data)
        else:
            self.counts['held_back'] += 1
            return
        self.emulation.released(item)

    def _release_failed(self, exc):
        self.counts['publish_errors'] += 1
        self.get_logger().error(f'sending failed: {exc}', throttle_duration_sec=5.0)

    def _on_replay_drop(self, key, verdict):
        self.get_logger().warning(f'dropped a sample on {key}: {verdict.replace("_", " ")} '
                                  '(replay protection)', throttle_duration_sec=2.0)
        if verdict == 'stale_session' and not self._stale_warned:
            self._stale_warned = True
            self.get_logger().warning(
                f'samples of a stale {self.peer_role} session keep arriving: another '
                f'{self.peer_role} link, or a replay of an earlier one')

    def _on_new_peer_session(self, previous, current):
        what = 'first' if previous is None else 'new (the other site restarted)'
        self.get_logger().info(f'{what} {self.peer_role} session {current.hex()[:16]}...')

    def _publish_local_state(self, why):
        """Surgeon side: what a console hears while the patient site cannot speak."""
        state = contract.SafetyStatus(contract.SafetyState.HOLD, f'site_link: {why}')
        stream = self._state_stream()
        self._publish_dds(stream, serialize_message(String(data=state.encode())))

    def _state_stream(self):
        return next(s for s in self.incoming if s.kind == link.STATE)

    # --- graph and statistics ---------------------------------------------------------------

    def _check_graph(self):
        """Check that the two sites are two DDS domains; say so loudly when they are one."""
        topics = contract.arm_topics(self.config.arm)
        probe = (contract.console_topic(topics['servo_cp']) if self.role == 'patient'
                 else topics['measured_cp'])
        found = self.count_publishers(probe) > 0
        if found and not self._same_domain:
            self.get_logger().error(
                f'{probe} is published in this DDS domain: the two sites share one domain. '
                'site_link joins two domains (link:=zenoh); in one domain use network_relay '
                '(link:=dds). Safety state and statistics are not carried while this lasts.')
        self._same_domain = found

    def link_status(self):
        """Return the link's own DiagnosticStatus (``<node>: link``)."""
        cfg = self.config
        with self._lock:
            values = self.peer.values()
            connection = self.peer.connection
            since = values['connection_since_s']
            identity = self.peer.identity
        values.update({
            'role': self.role, 'endpoint': str(self.endpoint),
            'link_namespace': cfg.link_namespace,
            'security': 'INSECURE plain TCP' if cfg.insecure else 'mutual TLS',
            'own_identity': self.own_cn or '-',
            'session': self.session_id.hex(),
            'lease_s': cfg.lease,
            'scheduling': self.schedule.describe(),
            'messages_sent': self.counts['sent'],
            'messages_received': self.counts['received'],
            'held_back': self.counts['held_back'],
            'refused_handshakes': self.counts['refused_handshakes'],
            'refused_by_peer': self.counts['refused_by_peer'],
            'connect_failures': self.counts['connect_failures'],
            'publish_errors': self.counts['publish_errors'],
            'replay_drops': self.guard.dropped,
            'sequence_gaps': self.guard.missing,
            'same_domain': self._same_domain,
        })
        values.update({f'replay_{cause}': self.guard.counts[cause]
                       for cause in link.DROP_CAUSES})
        if connection == link.CONNECTED:
            level = 'WARN' if self.guard.dropped or self._same_domain else 'OK'
            message = f'connected to {identity}'
            if self.guard.dropped:
                message += f', {self.guard.dropped} replayed sample(s) dropped'
        elif connection == link.LOST:
            level, message = 'ERROR', f'{self.peer_role} site lost {since:.1f} s ago'
        else:
            level, message = 'WARN', f'waiting for the {self.peer_role} site'
        return diagnostic_status(f'{self.get_name()}: link', self.get_name(), level, message,
                                 values)

    def statuses(self):
        out = []
        if self.emulation is not None:
            out = [self.emulation.status(d, self.get_name()) for d in DIRECTIONS]
        return out + [self.link_status()]

    def _publish_stats(self):
        msg = diagnostic_array(self, self.statuses())
        if self.emulation is not None:
            self._stats_pub.publish(msg)
        self._diag_pub.publish(msg)

    def on_shutdown(self):
        if self.emulation is not None:
            self._scheduler.stop()
        session = getattr(self, 'session', None)
        if session is not None:
            try:
                self.token.undeclare()
                session.close()
            except Exception as exc:    # noqa: B902 - zenoh raises its own error types
                self.get_logger().warning(f'closing the Zenoh session: {exc}')
        if self._zenoh_log is not None:
            self._zenoh_log.close()


def main(args=None):
    sys.exit(run_node(SiteLink, args))


if __name__ == '__main__':
    main()
