"""telesurgery-certs, the credential checks of site_link, endpoints and its Zenoh config."""
import datetime
import ipaddress
import os
import shutil
import stat

from cryptography import x509
import pytest

from telesurgery_ros.core import link_tls
from telesurgery_ros.tools import certs

FILES = ('ca.pem', 'ca.key', 'surgeon-console.pem', 'surgeon-console.key', 'patient-site.pem',
         'patient-site.key')


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    """Two deployments' certificates: 'a' (ours) and 'b' (another CA)."""
    root = tmp_path_factory.mktemp('certs')
    assert certs.main([str(root / 'a'), '--host', 'patient.example.org', '--host',
                       '192.0.2.10']) == 0
    assert certs.main([str(root / 'b')]) == 0
    return root


def paths(folder, role):
    return link_tls.credential_paths(role, str(folder))


def problems(role, ca, cert, key):
    with pytest.raises(link_tls.CredentialError) as info:
        link_tls.load_credentials(role, str(ca), str(cert), str(key))
    return info.value.problems


def test_certs_tool_writes_the_files_with_private_keys_0600(lab, capsys):
    folder = lab / 'a'
    assert sorted(os.listdir(folder)) == sorted(FILES)
    for name in FILES:
        mode = stat.S_IMODE(os.stat(folder / name).st_mode)
        if name.endswith('.key'):
            assert mode == 0o600, name
        else:
            assert not mode & 0o022, name
    cert = x509.load_pem_x509_certificate((folder / 'patient-site.pem').read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(alt.get_values_for_type(x509.DNSName)) == {'localhost', 'patient.example.org'}
    assert set(alt.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ('127.0.0.1', '::1', '192.0.2.10')}
    for role, cn in link_tls.ROLE_NAMES.items():
        creds = link_tls.load_credentials(role, *paths(folder, role))
        assert creds.common_name == cn


def test_certs_tool_refuses_to_overwrite_keys(lab, tmp_path, capsys):
    target = tmp_path / 'again'
    shutil.copytree(lab / 'a', target)
    before = {n: (target / n).read_bytes() for n in FILES}
    capsys.readouterr()
    assert certs.main([str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'refusing to overwrite' in err[0] and '.key' in err[0]
    assert {n: (target / n).read_bytes() for n in FILES} == before
    # one key alone is enough to refuse, and nothing is written then
    only = tmp_path / 'one'
    only.mkdir()
    (only / 'patient-site.key').write_text('mine')
    assert certs.main([str(only)]) == 2
    assert os.listdir(only) == ['patient-site.key']
    assert certs.main([str(tmp_path / 'x'), '--host', 'bad host!']) == 2
    assert 'not an IP address or a DNS host name' in capsys.readouterr().err


def test_good_credentials_and_every_problem_named(lab, tmp_path):
    ours, theirs = lab / 'a', lab / 'b'
    ca, cert, key = paths(ours, 'patient')
    # missing file
    found = problems('patient', ca, tmp_path / 'none.pem', key)
    assert found == [f'{tmp_path}/none.pem: certificate missing (create the files with: '
                     'telesurgery-certs DIR)']
    # unreadable (a directory where the key should be)
    found = problems('patient', ca, cert, tmp_path)
    assert len(found) == 1 and found[0].startswith(f'{tmp_path}: private key unreadable')
    # not a certificate
    junk = tmp_path / 'junk.pem'
    junk.write_text('hello')
    assert problems('patient', junk, cert, key) == [f'{junk}: not a PEM certificate']
    # a certificate (and its key) from another CA
    other_cert, other_key = paths(theirs, 'patient')[1:]
    found = problems('patient', ca, other_cert, other_key)
    assert found == [f"{other_cert}: certificate from another CA (issued by 'telesurgery lab "
                     f"CA', not signed by the CA in {ca})"]
    # the wrong role: the surgeon's certificate on the patient link
    s_cert, s_key = paths(ours, 'surgeon')[1:]
    found = problems('patient', ca, s_cert, s_key)
    assert found == [f"{s_cert}: wrong role: certificate CN 'surgeon-console' belongs to the "
                     "surgeon site; this link's role is patient (CN 'patient-site')"]
    # a key that is not the certificate's
    found = problems('patient', ca, cert, s_key)
    assert found == [f'{s_key}: private key does not match the certificate {cert}']
    # a key others can read
    loose = tmp_path / 'loose.key'
    shutil.copy(key, loose)
    os.chmod(loose, 0o644)
    found = problems('patient', ca, cert, loose)
    assert found == [f'{loose}: private key readable by others (mode 0o644); chmod 600 it']
    # a site certificate in place of the CA
    found = problems('patient', cert, cert, key)
    assert found == [f'{cert}: not a CA certificate (no basicConstraints CA)']


def test_expired_certificate(tmp_path):
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    certs.create(str(tmp_path), days=10, now=past)
    ca, cert, key = paths(tmp_path, 'surgeon')
    found = problems('surgeon', ca, cert, key)
    assert found == [f'{cert}: certificate expired on 2020-01-11 00:00 UTC',
                     f'{ca}: CA certificate expired on 2020-01-11 00:00 UTC']


def test_default_certs_dir():
    assert link_tls.default_certs_dir({'ROS_HOME': '/srv/ros'}) == '/srv/ros/telesurgery_certs'
    assert link_tls.default_certs_dir({}).endswith('/.ros/telesurgery_certs')


@pytest.mark.parametrize('text, insecure, ok', [
    ('tls/127.0.0.1:7447', False, True),
    ('tls/0.0.0.0:7447', False, True),
    ('tls/[::1]:7447', False, True),
    ('tls/patient.example.org:7447', False, True),
    ('tcp/127.0.0.1:7447', False, False),       # plain TCP needs insecure
    ('tcp/127.0.0.1:7447', True, True),
    ('tcp/localhost:7447', True, True),
    ('tcp/[::1]:7447', True, True),
    ('tcp/0.0.0.0:7447', True, False),          # insecure: loopback only
    ('tcp/192.0.2.10:7447', True, False),
    ('tls/127.0.0.1:7447', True, False),        # insecure means tcp/
    ('udp/127.0.0.1:7447', False, False),
    ('tls/127.0.0.1', False, False),
    ('tls/127.0.0.1:0', False, False),
    ('tls/127.0.0.1:7447?prio=1', False, False),
])
def test_endpoints(text, insecure, ok):
    endpoint, found = link_tls.check_endpoint(text, insecure)
    assert (not found) == ok, found
    if ok:
        assert str(endpoint) == text
    assert all(line.startswith("parameter '") for line in found)


def test_insecure_refusal_names_the_endpoint():
    _endpoint, found = link_tls.check_endpoint('tcp/192.0.2.10:7447', True)
    assert found == ["parameter 'insecure': refused for the non-loopback endpoint "
                     "'tcp/192.0.2.10:7447': plain TCP has no authentication and no "
                     'encryption; it is for tests on 127.0.0.1 / ::1 / localhost only']


def test_zenoh_config_is_locked_down(lab):
    creds = link_tls.load_credentials('patient', *paths(lab / 'a', 'patient'))
    endpoint = link_tls.parse_endpoint('tls/127.0.0.1:7447')
    cfg = link_tls.zenoh_config('patient', endpoint, creds, 'telesurgery', 'psm1', 1.0)
    assert cfg['mode'] == 'peer'
    assert cfg['listen']['endpoints'] == ['tls/127.0.0.1:7447']
    assert cfg['connect']['endpoints'] == []
    assert cfg['scouting'] == {'multicast': {'enabled': False}, 'gossip': {'enabled': False}}
    transport = cfg['transport']
    assert transport['shared_memory'] == {'enabled': False}
    assert transport['link']['protocols'] == ['tls']
    assert transport['link']['tx']['lease'] == 1000
    tls = transport['link']['tls']
    assert tls['enable_mtls'] and tls['verify_name_on_connect']
    assert tls['listen_certificate'].endswith('patient-site.pem')
    acl = cfg['access_control']
    assert acl['enabled'] and acl['default_permission'] == 'deny'
    assert acl['subjects'] == [{'id': 'peer_site', 'cert_common_names': ['surgeon-console']}]
    rules = {r['id']: r for r in acl['rules']}
    assert rules['peer_puts']['key_exprs'] == link_tls.command_keys('telesurgery', 'psm1') == [
        'telesurgery/psm1/servo_cp', 'telesurgery/psm1/jaw/servo_jp']
    assert 'telesurgery/safety/state' in rules['own_puts']['key_exprs']
    assert not set(rules['peer_puts']['key_exprs']) & set(rules['own_puts']['key_exprs'])
    surgeon = link_tls.zenoh_config('surgeon', endpoint, None, 'telesurgery', 'psm1', 0.5)
    assert surgeon['listen']['endpoints'] == [] and surgeon['connect']['endpoints'] == [
        'tls/127.0.0.1:7447']
    assert 'tls' not in surgeon['transport']['link']
    assert surgeon['access_control']['subjects'] == [{'id': 'peer_site'}]   # insecure: any
    assert surgeon['transport']['link']['tx']['lease'] == 500
    surgeon_rules = {r['id']: r for r in surgeon['access_control']['rules']}
    assert surgeon_rules['own_puts']['key_exprs'] == rules['peer_puts']['key_exprs']
