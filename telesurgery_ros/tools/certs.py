"""
``telesurgery-certs DIR``: a lab certificate authority and the two site certificates.

Writes, with the ``cryptography`` package (ECDSA P-256 keys, SHA-256 signatures)::

    DIR/ca.pem                  the deployment's CA certificate (both sites need it)
    DIR/ca.key                  the CA's private key (mode 0600; keep it off both sites)
    DIR/surgeon-console.pem     certificate of the surgeon site's link, CN surgeon-console
    DIR/surgeon-console.key     its private key (mode 0600)
    DIR/patient-site.pem        certificate of the patient site's link, CN patient-site
    DIR/patient-site.key        its private key (mode 0600)

Each site certificate can serve both ends of a TLS connection (extended key usage server and
client authentication), and its subject alternative names are ``localhost``, ``127.0.0.1``,
``::1`` plus every ``--host`` given, so a connection to any of those verifies. The patient
site listens, so its certificate must name the host name or IP address the surgeon site
connects to. Existing keys are never overwritten: the tool stops with one line and exit
code 2 (delete the directory's keys yourself to start again).
"""
import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from telesurgery_ros.core.link_tls import ROLE_NAMES

CA_NAME = 'telesurgery lab CA'
DEFAULT_HOSTS = ('localhost', '127.0.0.1', '::1')
KEY_MODE = 0o600


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'telesurgery_ros lab'),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def check_host(host):
    """Return a problem text if ``host`` is neither an IP address nor a DNS name."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip('.').split('.')
    if not host or len(host) > 253 or not all(
            label and len(label) <= 63 and label.replace('-', '').isalnum()
            and not label.startswith('-') and not label.endswith('-') for label in labels):
        return f'--host {host!r}: not an IP address or a DNS host name'
    return None


def make_ca(days, now):
    """Return (key, certificate) of a self-signed CA valid for ``days``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(CA_NAME)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_site(common_name, hosts, ca_key, ca_cert, days, now):
    """Return (key, certificate) of one site, signed by the CA, naming ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_key(path, key):
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    # O_EXCL: never replace a key, even one that appeared since the check.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, 'wb') as handle:
        handle.write(data)
    os.chmod(path, KEY_MODE)


def _write_cert(path, cert):
    with open(path, 'wb') as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))


def create(directory, hosts=(), days=365, now=None):
    """
    Create the CA and both site certificates in ``directory``; return the written paths.

    Raise FileExistsError naming the first key file that already exists (nothing written).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    names = list(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    os.makedirs(directory, exist_ok=True)
    files = ['ca'] + [ROLE_NAMES[role] for role in ('surgeon', 'patient')]
    for stem in files:
        path = os.path.join(directory, stem + '.key')
        if os.path.lexists(path):
            raise FileExistsError(path)
    ca_key, ca_cert = make_ca(days, now)
    written = []
    _write_key(os.path.join(directory, 'ca.key'), ca_key)
    _write_cert(os.path.join(directory, 'ca.pem'), ca_cert)
    written += ['ca.pem', 'ca.key']
    for stem in files[1:]:
        key, cert = make_site(stem, names, ca_key, ca_cert, days, now)
        _write_key(os.path.join(directory, stem + '.key'), key)
        _write_cert(os.path.join(directory, stem + '.pem'), cert)
        written += [stem + '.pem', stem + '.key']
    return [os.path.join(directory, name) for name in written]


def build_parser():
    parser = argparse.ArgumentParser(
        prog='telesurgery-certs',
        description='Create a lab CA and the surgeon-console and patient-site certificates '
                    'for the site_link TLS connection.')
    parser.add_argument('directory', metavar='DIR', help='where to write the files')
    parser.add_argument('--host', action='append', default=[], metavar='NAME_OR_IP',
                        help='another host name or IP address the certificates name (the '
                             "patient site's address as the surgeon site connects to it); "
                             'repeatable. Always named: ' + ', '.join(DEFAULT_HOSTS))
    parser.add_argument('--days', type=int, default=365,
                        help='validity in days (default 365)')
    return parser


def main(argv=None):
    options = build_parser().parse_args(argv)
    problems = [p for p in (check_host(h) for h in options.host) if p]
    if not 1 <= options.days <= 3650:
        problems.append(f'--days must be 1 to 3650, got {options.days}')
    if problems:
        for problem in problems:
            print(f'telesurgery-certs: {problem}', file=sys.stderr)
        return 2
    try:
        written = create(options.directory, options.host, options.days)
    except FileExistsError as exc:
        print(f'telesurgery-certs: {exc.args[0]}: a key already exists; refusing to overwrite '
              'it (remove the old keys first)', file=sys.stderr)
        return 2
    except OSError as exc:
        print(f'telesurgery-certs: {options.directory}: {exc.strerror or exc}', file=sys.stderr)
        return 2
    hosts = ', '.join(dict.fromkeys((*DEFAULT_HOSTS, *options.host)))
    print(f'telesurgery-certs: wrote {len(written)} files to {options.directory} '
          f'(valid {options.days} days; names {hosts})')
    for path in written:
        mode = oct(os.stat(path).st_mode & 0o777)
        print(f'  {path}  {mode}')
    print('copy ca.pem + surgeon-console.pem/.key to the surgeon site, ca.pem + '
          'patient-site.pem/.key to the patient site; keep ca.key elsewhere')
    return 0


if __name__ == '__main__':
    sys.exit(main())
