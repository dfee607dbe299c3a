"""
Security of the link between the sites, without ROS: certificates, endpoints, Zenoh config.

Credentials
    Each site presents a certificate of the deployment's CA (``telesurgery-certs``): the
    surgeon site ``surgeon-console``, the patient site ``patient-site`` (the certificate's
    common name is the role). :func:`load_credentials` checks, before Zenoh sees them, that
    every file is readable and well formed, that the certificate was issued by the CA, is
    valid now, names this link's role and matches its private key, and that the key is not
    readable by others; each problem is one line naming the file.

Endpoints
    A Zenoh locator ``tls/<host>:<port>`` (the patient listens on it, the surgeon connects
    to it). ``insecure`` (plain ``tcp/``, no authentication, no encryption) is for tests on
    loopback only: any other host is refused.

Zenoh configuration
    :func:`zenoh_config` returns the session configuration as a dict: peer mode with no
    scouting and no gossip, only the one endpoint and only its protocol, shared memory off
    (so every byte crosses the TLS link, even on one machine), mutual TLS with name
    verification, the lease of at most 1 s, and access control with default deny:
    ``surgeon-console`` may only put commands, ``patient-site`` may only put feedback,
    safety state and statistics, each may subscribe to what the other puts and announce its
    own liveliness token.
"""
from dataclasses import dataclass
import datetime
import ipaddress
import os
import stat

from telesurgery_ros.core.link import (
    COMMAND, FEEDBACK, PEER_ROLE, STATE, streams, token_key)

ROLE_NAMES = {'surgeon': 'surgeon-console', 'patient': 'patient-site'}
PROTOCOLS = ('tls', 'tcp')
DEFAULT_ENDPOINT = 'tls/127.0.0.1:7447'
DEFAULT_PORT = 7447
_QUEUES = ('control', 'real_time', 'interactive_high', 'interactive_low', 'data_high', 'data',
           'data_low', 'background')


class CredentialError(ValueError):
    """Problems with the certificate files: one line per problem, each naming its file."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


@dataclass(frozen=True)
class Credentials:
    """The checked files of one site and what they say."""

    ca_file: str
    cert_file: str
    key_file: str
    common_name: str
    not_after: datetime.datetime


def default_certs_dir(environ=os.environ):
    """Where the link looks when ``certs`` is empty: ``$ROS_HOME/telesurgery_certs``."""
    home = environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros')
    return os.path.join(home, 'telesurgery_certs')


def credential_paths(role, certs_dir, ca_file='', cert_file='', key_file=''):
    """Return (ca, certificate, key) paths: the explicit files, else those of ``certs_dir``."""
    stem = ROLE_NAMES[role]
    folder = os.path.expanduser(certs_dir)
    return (os.path.expanduser(ca_file) or os.path.join(folder, 'ca.pem'),
            os.path.expanduser(cert_file) or os.path.join(folder, stem + '.pem'),
            os.path.expanduser(key_file) or os.path.join(folder, stem + '.key'))


def _read(path, what):
    try:
        with open(path, 'rb') as handle:
            return handle.read(), None
    except FileNotFoundError:
        return None, f'{path}: {what} missing (create the files with: telesurgery-certs DIR)'
    except OSError as exc:
        return None, f'{path}: {what} unreadable: {exc.strerror or exc}'


def _common_name(cert):
    from cryptography.x509.oid import NameOID
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else ''


def _issuer_name(cert):
    from cryptography.x509.oid import NameOID
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if names else cert.issuer.rfc4514_string()


def load_credentials(role, ca_file, cert_file, key_file, now=None):
    """
    Check the CA, the certificate and the key of a site with ``role``; return Credentials.

    Raise :class:`CredentialError` listing every problem, one line each, naming the file.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    now = now or datetime.datetime.now(datetime.timezone.utc)
    problems = []
    ca = cert = key = None
    data, problem = _read(ca_file, 'CA certificate')
    if problem:
        problems.append(problem)
    else:
        try:
            ca = x509.load_pem_x509_certificate(data)
        except ValueError:
            problems.append(f'{ca_file}: not a PEM certificate')
        else:
            try:
                is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                problems.append(f'{ca_file}: not a CA certificate (no basicConstraints CA)')
                ca = None
    data, problem = _read(cert_file, 'certificate')
    if problem:
        problems.append(problem)
    else:
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            problems.append(f'{cert_file}: not a PEM certificate')
    data, problem = _read(key_file, 'private key')
    if problem:
        problems.append(problem)
    else:
        mode = os.stat(key_file).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(f'{key_file}: private key readable by others (mode '
                            f'{oct(mode & 0o777)}); chmod 600 it')
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            problems.append(f'{key_file}: not an unencrypted PEM private key ({exc})')
    if cert is not None:
        expected = ROLE_NAMES[role]
        name = _common_name(cert)
        if name != expected:
            owner = {v: k for k, v in ROLE_NAMES.items()}.get(name)
            whose = f'the {owner} site' if owner else 'no site of this deployment'
            problems.append(f"{cert_file}: wrong role: certificate CN '{name}' belongs to "
                            f"{whose}; this link's role is {role} (CN '{expected}')")
        if ca is not None:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                problems.append(f'{cert_file}: certificate from another CA (issued by '
                                f"'{_issuer_name(cert)}', not signed by the CA in {ca_file})")
        if now < cert.not_valid_before_utc:
            problems.append(f'{cert_file}: certificate not valid before '
                            f'{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC')
        if now > cert.not_valid_after_utc:
            problems.append(f'{cert_file}: certificate expired on '
                            f'{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC')
        if key is not None and key.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo) != cert.public_key(
                ).public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo):
            problems.append(f'{key_file}: private key does not match the certificate '
                            f'{cert_file}')
    if ca is not None and now > ca.not_valid_after_utc:
        problems.append(f'{ca_file}: CA certificate expired on '
                        f'{ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC')
    if problems:
        raise CredentialError(problems)
    return Credentials(ca_file, cert_file, key_file, _common_name(cert),
                       cert.not_valid_after_utc)


# --- endpoints ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A parsed Zenoh locator ``<protocol>/<host>:<port>``."""

    protocol: str
    host: str
    port: int

    def __str__(self):
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'{self.protocol}/{host}:{self.port}'

    @property
    def loopback(self):
        if self.host == 'localhost':
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_endpoint(text):
    """Parse ``tls/host:port`` (IPv6 in brackets); raise ValueError with the reason."""
    protocol, sep, rest = text.strip().partition('/')
    if not sep or protocol not in PROTOCOLS:
        raise ValueError(f"{text!r}: expected '<protocol>/<host>:<port>' with protocol "
                         f"{' or '.join(PROTOCOLS)}, e.g. '{DEFAULT_ENDPOINT}'")
    if '#' in rest or '?' in rest:
        raise ValueError(f'{text!r}: no locator options (?...) or settings (#...) here')
    if rest.startswith('['):
        host, sep, port = rest[1:].partition(']:')
    else:
        host, sep, port = rest.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected '<host>:<port>' with a port 1 to 65535 "
                         '(IPv6 addresses in brackets: [::1]:7447)')
    return Endpoint(protocol, host, int(port))


def check_endpoint(text, insecure):
    """Return (Endpoint, problems): TLS unless ``insecure``, and insecure on loopback only."""
    try:
        endpoint = parse_endpoint(text)
    except ValueError as exc:
        return None, [f"parameter 'link_endpoint': {exc}"]
    problems = []
    if insecure:
        if endpoint.protocol != 'tcp':
            problems.append(f"parameter 'link_endpoint': insecure: true uses plain TCP; give "
                            f'a tcp/ endpoint, got {text!r}')
        if not endpoint.loopback:
            problems.append(f"parameter 'insecure': refused for the non-loopback endpoint "
                            f'{text!r}: plain TCP has no authentication and no encryption; '
                            'it is for tests on 127.0.0.1 / ::1 / localhost only')
    elif endpoint.protocol != 'tls':
        problems.append(f"parameter 'link_endpoint': the link runs over mutual TLS; give a "
                        'tls/ endpoint (plain tcp/ only with insecure: true on loopback), got '
                        f'{text!r}')
    return endpoint, problems


# --- the Zenoh session configuration --------------------------------------------------

def access_control(role, namespace, arm, peer_common_name):
    """
    Return the Zenoh ``access_control`` section of one site (default deny).

    ``peer_common_name`` is the peer certificate's CN; None (insecure mode) matches any peer.
    """
    own_keys = [s.key for s in streams(arm, namespace) if s.sender == role]
    peer_keys = [s.key for s in streams(arm, namespace) if s.sender != role]
    peer = PEER_ROLE[role]
    own_token, peer_token = token_key(namespace, role), token_key(namespace, peer)
    rules = [
        # What the peer may send us: its data puts, its subscriptions to our data, its
        # liveliness token and its interest in ours.
        {'id': 'peer_puts', 'permission': 'allow', 'flows': ['ingress'],
         'messages': ['put'], 'key_exprs': peer_keys},
        {'id': 'peer_subscriptions', 'permission': 'allow', 'flows': ['ingress'],
         'messages': ['declare_subscriber'], 'key_exprs': own_keys},
        {'id': 'peer_token', 'permission': 'allow', 'flows': ['ingress'],
         'messages': ['liveliness_token'], 'key_exprs': [peer_token]},
        {'id': 'peer_token_interest', 'permission': 'allow', 'flows': ['ingress'],
         'messages': ['declare_liveliness_subscriber', 'liveliness_query'],
         'key_exprs': [own_token]},
        # What we send the peer: the mirror image.
        {'id': 'own_puts', 'permission': 'allow', 'flows': ['egress'],
         'messages': ['put'], 'key_exprs': own_keys},
        {'id': 'own_subscriptions', 'permission': 'allow', 'flows': ['egress'],
         'messages': ['declare_subscriber'], 'key_exprs': peer_keys},
        {'id': 'own_token', 'permission': 'allow', 'flows': ['egress'],
         'messages': ['liveliness_token'], 'key_exprs': [own_token]},
        {'id': 'own_token_interest', 'permission': 'allow', 'flows': ['egress'],
         'messages': ['declare_liveliness_subscriber', 'liveliness_query'],
         'key_exprs': [peer_token]},
    ]
    subject = {'id': 'peer_site'}
    if peer_common_name is not None:
        subject['cert_common_names'] = [peer_common_name]
    return {
        'enabled': True,
        'default_permission': 'deny',
        'rules': rules,
        'subjects': [subject],
        'policies': [{'rules': [r['id'] for r in rules], 'subjects': ['peer_site']}],
    }


def command_keys(namespace, arm):
    """Return the keys of the command streams (what only the surgeon may put)."""
    return [s.key for s in streams(arm, namespace) if s.kind == COMMAND]


def publisher_qos(zenoh, kind):
    """
    Return the Zenoh publisher options of a stream kind (see core.link.Stream).

    ``zenoh`` is the imported module (this module does not import it).
    """
    if kind == COMMAND:
        return {'congestion_control': zenoh.CongestionControl.DROP, 'express': True,
                'priority': zenoh.Priority.REAL_TIME,
                'reliability': zenoh.Reliability.BEST_EFFORT}
    if kind == FEEDBACK:
        return {'congestion_control': zenoh.CongestionControl.DROP, 'express': True,
                'priority': zenoh.Priority.INTERACTIVE_HIGH,
                'reliability': zenoh.Reliability.BEST_EFFORT}
    if kind == STATE:
        return {'congestion_control': zenoh.CongestionControl.BLOCK, 'express': True,
                'priority': zenoh.Priority.REAL_TIME,
                'reliability': zenoh.Reliability.RELIABLE}
    return {'congestion_control': zenoh.CongestionControl.DROP,
            'priority': zenoh.Priority.DATA, 'reliability': zenoh.Reliability.RELIABLE}


def zenoh_config(role, endpoint, credentials, namespace, arm, lease, retry_max=1.0):
    """
    Return the Zenoh session configuration of one site as a dict (JSON-serialisable).

    ``credentials`` is None in insecure mode (plain TCP, loopback only). ``lease`` (s) is
    announced to the peer: it declares us gone after that long without a keep-alive.
    """
    endpoint = str(endpoint)
    protocol = endpoint.partition('/')[0]
    listening = role == 'patient'
    config = {
        'mode': 'peer',
        'listen': {'endpoints': [endpoint] if listening else [], 'exit_on_failure': True},
        'connect': {'endpoints': [] if listening else [endpoint],
                    'retry': {'period_init_ms': 250, 'period_max_ms': int(retry_max * 1000),
                              'period_increase_factor': 2}},
        'open': {'return_conditions': {'connect_scouted': False, 'declares': False}},
        'scouting': {'multicast': {'enabled': False}, 'gossip': {'enabled': False}},
        'adminspace': {'enabled': False},
        'transport': {
            'shared_memory': {'enabled': False},
            'unicast': {'max_links': 1},
            'link': {
                'protocols': [protocol],
                # 16 batches (the most Zenoh allows) per priority queue instead of 2: an
                # express sample takes a batch of its own, so 2 overflow as soon as the TX
                # thread is late by two command periods (4 ms) on a busy machine.
                'tx': {'lease': int(round(lease * 1000)), 'keep_alive': 4,
                       'queue': {'size': dict.fromkeys(_QUEUES, 16)}},
            },
        },
        'access_control': access_control(
            role, namespace, arm,
            None if credentials is None else ROLE_NAMES[PEER_ROLE[role]]),
    }
    if credentials is not None:
        tls = {'root_ca_certificate': credentials.ca_file, 'enable_mtls': True,
               'verify_name_on_connect': True, 'close_link_on_expiration': True}
        side = 'listen' if listening else 'connect'
        tls[f'{side}_certificate'] = credentials.cert_file
        tls[f'{side}_private_key'] = credentials.key_file
        config['transport']['link']['tls'] = tls
    return config
