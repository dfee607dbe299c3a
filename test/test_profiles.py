"""Network profiles: the shipped file, validation messages and overrides."""
import re

import pytest

from telesurgery_ros.core import profiles as netprofiles
from telesurgery_ros.core.netem import LinkConfig
from telesurgery_ros.core.params import ConfigError

REQUIRED = ('none', 'lan', 'metro_5g', 'china_5g_1200km', 'lindbergh_2001',
            'rome_beijing_2024', 'shanghai_kuwait_2024', 'starlink', 'geo_satellite',
            'degraded')


@pytest.fixture(scope='module')
def shipped():
    return netprofiles.load_profiles(netprofiles.default_profiles_path())


def problems(profiles, name, overrides=''):
    with pytest.raises(ConfigError) as info:
        netprofiles.resolve(profiles, name, overrides)
    print(info.value)
    return info.value.problems


def test_every_shipped_profile_is_valid(shipped):
    assert set(REQUIRED) <= set(netprofiles.profile_names(shipped))
    for name in netprofiles.profile_names(shipped):
        resolved = netprofiles.resolve(shipped, name)
        assert isinstance(resolved.forward, LinkConfig), name
        assert resolved.description, name


def test_every_figure_has_its_source_in_a_comment():
    with open(netprofiles.default_profiles_path()) as handle:
        lines = handle.read().splitlines()
    figure = re.compile(r'^\s+(delay|jitter|loss|outage|trace|correlation):')
    missing = [line for line in lines if figure.match(line) and '#' not in line]
    assert not missing, missing


def test_published_figures_become_one_way_delays(shipped):
    def delay(name):
        return netprofiles.resolve(shipped, name).forward.delay

    assert delay('none') == 0.0
    assert delay('lindbergh_2001') == pytest.approx(0.155 / 2)
    assert delay('rome_beijing_2024') == pytest.approx(0.135 / 2)
    assert delay('shanghai_kuwait_2024') == pytest.approx(0.1814 / 2)
    assert delay('geo_satellite') == pytest.approx(0.6 / 2)
    assert delay('starlink') == pytest.approx(0.05 / 2)
    china = netprofiles.resolve(shipped, 'china_5g_1200km').forward
    assert china.loss_model == 'random' and china.loss_p == pytest.approx(0.002)
    assert 2 * china.jitter == pytest.approx(0.003)    # max jitter 3 ms peak to peak
    starlink = netprofiles.resolve(shipped, 'starlink').backward
    assert starlink.loss_model == 'gilbert_elliott' and starlink.outage_mean_on == 15.0
    degraded = netprofiles.resolve(shipped, 'degraded').forward
    assert degraded.loss_model == 'gilbert_elliott' and degraded.outage_mean_off > 0.0
    assert netprofiles.resolve(shipped, 'starlink_trace').forward.trace is not None


def test_unknown_profile_lists_the_known_ones(shipped):
    (line,) = problems(shipped, 'rome_beijing')
    assert "'rome_beijing' is unknown" in line and 'rome_beijing_2024' in line


@pytest.mark.parametrize('override, needle', [
    ('forward.delay=-0.01', 'field forward.delay must be 0.0 to 60.0 s, got -0.01'),
    ('backward.loss.p=1.5', 'field backward.loss.p must be 0.0 to 1.0, got 1.5'),
    ('forward.distribution=cauchy', "field forward.distribution must be one of 'uniform'"),
    ('forward.dealy=0.1', 'field forward.dealy is unknown; known fields: delay'),
    ('forward.reorder_gap=0', 'field forward.reorder_gap must be 1 to'),
    ('forward.delay=fast', "field forward.delay must be 0.0 to 60.0 s, got 'fast'"),
    ('forward.outage.windows=[1, 2, 3]', 'field forward.outage.windows: must be start, '
                                         'duration pairs'),
    ('forward.outage.mean_on=5', 'outage.mean_on and .mean_off: set both'),
    ('forward.loss.p13=0.7; forward.loss.p14=0.5', 'loss.p13 + loss.p14 must be <= 1'),
    ('forward.trace=missing.csv', 'field forward.trace: cannot read'),
    ('sideways.delay=1', "unknown direction 'sideways'"),
    ('forward.delay', "expected '<direction>.<field>=<value>'"),
])
def test_bad_override_names_the_field(shipped, override, needle):
    found = problems(shipped, 'none', override)
    assert any(needle in line for line in found), found


def test_overrides_apply_per_direction_and_to_both(shipped):
    r = netprofiles.resolve(
        shipped, 'rome_beijing_2024',
        'both.delay=0.02; backward.jitter=0; forward.outage.windows=[[5, 1], [20, 2]];'
        ' forward.loss.model=gilbert_elliott; forward.loss.p=0.01; forward.loss.r=0.5')
    assert r.forward.delay == r.backward.delay == 0.02
    assert r.backward.jitter == 0.0 and r.forward.jitter == pytest.approx(0.002)
    assert r.forward.outage_windows == ((5.0, 1.0), (20.0, 2.0))
    assert r.forward.loss_model == 'gilbert_elliott' and r.backward.loss_model == 'random'
    # integers are accepted for seconds, and the profile itself is untouched
    assert netprofiles.resolve(shipped, 'none', 'forward.delay=1').forward.delay == 1.0
    assert netprofiles.resolve(shipped, 'rome_beijing_2024').forward.delay == pytest.approx(0.0675)


def test_bad_profile_in_a_file_names_profile_and_field(tmp_path):
    path = tmp_path / 'profiles.yaml'
    path.write_text('profiles:\n'
                    '  broken:\n'
                    '    both: {delay: -1, distribution: cauchy}\n'
                    '    forward: {loss: {model: random, p: 2}}\n'
                    '  fine: {both: {delay: 0.01}}\n')
    profiles = netprofiles.load_profiles(str(path))
    found = problems(profiles, 'broken')
    assert "profile 'broken': field forward.delay must be 0.0 to 60.0 s, got -1.0" in found
    assert any("profile 'broken': field backward.distribution must be one of" in line
               for line in found)
    assert "profile 'broken': field forward.loss.p must be 0.0 to 1.0, got 2.0" in found
    assert netprofiles.resolve(profiles, 'fine').backward.delay == 0.01


@pytest.mark.parametrize('text, needle', [
    ('profiles: [1, 2]\n', "expected a 'profiles:' mapping"),
    ('profiles:\n  a: {up: {delay: 1}}\n', "profile 'a': unknown key(s) up"),
    ('profiles:\n  a: {both: {delay: 1}\n', 'line 3: invalid YAML'),
])
def test_malformed_profiles_file(tmp_path, text, needle):
    path = tmp_path / 'p.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        netprofiles.load_profiles(str(path))
    assert needle in str(info.value)


def test_missing_profiles_file():
    with pytest.raises(ConfigError, match='No such file'):
        netprofiles.load_profiles('/nonexistent/profiles.yaml')


def test_summary_mentions_the_impairments(shipped):
    assert netprofiles.summary(LinkConfig()) == 'no impairment'
    text = netprofiles.summary(netprofiles.resolve(shipped, 'degraded').forward)
    assert 'delay=0.1' in text and 'loss.model=gilbert_elliott' in text


def test_wired_and_cellular_profiles_never_reorder(shipped):
    """Every shipped profile but the explicit stress one keeps order (FIFO jitter)."""
    import numpy as np
    from telesurgery_ros.core.netem import Link, make_rng
    from telesurgery_ros.core.profiles import resolve
    rng = np.random.default_rng(0)
    # 500 Hz commands with a stalled timer's catch-ups: some arrive 50 us apart.
    gaps = np.where(rng.random(20000) < 0.1, 0.00005, 0.002)
    arrivals = np.cumsum(gaps)
    reordering = []
    for name in (n for n in shipped if not n.startswith('_')):
        resolved = resolve(shipped, name, '')
        for i, direction in enumerate(('forward', 'backward')):
            config = resolved.link(direction)
            link = Link(config, make_rng(0, i))
            releases = [r for t in arrivals for r in link.process(t, 100).releases[:1]]
            backwards = int(np.sum(np.diff(releases) < 0))
            if backwards:
                reordering.append(name)
            if config.preserve_order and config.reorder == 0.0:
                assert backwards == 0, f'{name} {direction}: {backwards} reordered'
    print(f'profiles that reorder: {sorted(set(reordering))}')
    assert sorted(set(reordering)) == ['degraded']
