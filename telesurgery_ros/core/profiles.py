"""
Named network profiles: loading, validation and per-field overrides, without ROS.

A profiles file (``config/network_profiles.yaml``) maps a name to the impairments of each
direction::

    profiles:
      rome_beijing_2024:
        description: Rome-Beijing fibre + 5G, June 2024
        both:      {delay: 0.0675, jitter: 0.002, distribution: normal}
        forward:   {loss: {model: random, p: 0.001}}
        backward:  {}

``both`` applies to the two directions first, then ``forward`` (console -> patient) and
``backward`` (patient -> console) refine it. Nested maps flatten to dotted fields
(``loss: {p: 0.01}`` is ``loss.p``). Overrides are ``'<direction>.<field>=<value>'`` with
direction ``forward``, ``backward`` or ``both``, separated by ``;`` (values are YAML:
``both.outage.windows=[5, 1, 20, 2]``). Every problem is reported with the profile or the
override and the field it concerns, and the allowed values.
"""
import dataclasses
import math
import os

from telesurgery_ros.core.netem import DISTRIBUTIONS, LinkConfig, LOSS_MODELS, parse_trace
from telesurgery_ros.core.params import ConfigError, Param
import yaml

DIRECTIONS = ('forward', 'backward')
_PROB = {'low': 0.0, 'high': 1.0}

# One table of the fields of a direction: dotted name -> (LinkConfig attribute, spec).
FIELDS = {
    'delay': ('delay', Param('delay', 0.0, 'constant one-way delay', 's', low=0.0,
                             high=60.0)),
    'jitter': ('jitter', Param('jitter', 0.0, 'delay variation: half-width (uniform) or '
                               'standard deviation', 's', low=0.0, high=60.0)),
    'distribution': ('distribution', Param('distribution', 'uniform', 'jitter distribution',
                                           choices=DISTRIBUTIONS)),
    'correlation': ('correlation', Param('correlation', 0.0, 'correlation of consecutive '
                                         'jitter draws', **_PROB)),
    'loss.model': ('loss_model', Param('loss.model', 'none', 'loss model',
                                       choices=LOSS_MODELS)),
    'loss.p': ('loss_p', Param('loss.p', 0.0, 'random: loss probability; gilbert_elliott: '
                               'P(good -> bad)', **_PROB)),
    'loss.r': ('loss_r', Param('loss.r', 1.0, 'gilbert_elliott: P(bad -> good)', **_PROB)),
    'loss.bad': ('loss_bad', Param('loss.bad', 1.0, 'gilbert_elliott: loss probability in '
                                   'the bad state (netem 1-h)', **_PROB)),
    'loss.good': ('loss_good', Param('loss.good', 0.0, 'gilbert_elliott: loss probability '
                                     'in the good state (netem 1-k)', **_PROB)),
    'loss.p13': ('loss_p13', Param('loss.p13', 0.0, '4state: gap -> burst loss', **_PROB)),
    'loss.p31': ('loss_p31', Param('loss.p31', 1.0, '4state: burst loss -> gap', **_PROB)),
    'loss.p32': ('loss_p32', Param('loss.p32', 0.0, '4state: burst loss -> burst reception',
                                   **_PROB)),
    'loss.p23': ('loss_p23', Param('loss.p23', 0.0, '4state: burst reception -> burst loss',
                                   **_PROB)),
    'loss.p14': ('loss_p14', Param('loss.p14', 0.0, '4state: gap -> isolated loss',
                                   **_PROB)),
    'duplicate': ('duplicate', Param('duplicate', 0.0, 'duplication probability', **_PROB)),
    'reorder': ('reorder', Param('reorder', 0.0, 'probability of sending with no delay',
                                 **_PROB)),
    'reorder_gap': ('reorder_gap', Param('reorder_gap', 1, 'netem gap: reorder only after '
                                         'gap-1 delayed messages', low=1, high=1000000)),
    'preserve_order': ('preserve_order', Param('preserve_order', True, 'jitter is queueing '
                                               'delay and never reorders (a FIFO path: '
                                               'fibre, 5G); false: netem-style, jitter '
                                               'reorders')),
    'rate': ('rate', Param('rate', 0.0, 'bottleneck bandwidth, 0 = unlimited', 'bit/s',
                           low=0.0)),
    'queue_limit': ('queue_limit', Param('queue_limit', 1000, 'drop-tail queue of the '
                                         'bottleneck', 'messages', low=1, high=10000000)),
    'outage.windows': ('outage_windows', Param(
        'outage.windows', [], 'scheduled outages as start, duration pairs from the start',
        's', item_type=float)),
    'outage.mean_on': ('outage_mean_on', Param('outage.mean_on', 0.0, 'mean up time between '
                                               'random outages, 0 = none', 's', low=0.0)),
    'outage.mean_off': ('outage_mean_off', Param('outage.mean_off', 0.0, 'mean duration of '
                                                 'random outages', 's', low=0.0)),
    'trace': ('trace', Param('trace', '', 'delay trace file (time_ms,delay_ms lines), '
                             'relative to the profiles file; replaces delay')),
}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A validated profile with its overrides applied."""

    name: str
    description: str
    forward: LinkConfig
    backward: LinkConfig

    def link(self, direction):
        return getattr(self, direction)


def default_profiles_path():
    """Return the packaged ``config/network_profiles.yaml``."""
    from telesurgery_ros.resources import data_path
    return data_path('config', 'network_profiles.yaml')


def load_profiles(path):
    """
    Read a profiles file; return ``{name: {'description', 'forward', 'backward'}}``.

    Each direction is a flat ``{dotted field: value}`` mapping, not yet validated (see
    :func:`resolve`). Raise :class:`ConfigError` for an unreadable or malformed file.
    """
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError([f'network profiles file {path}: {exc.strerror}']) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f' line {mark.line + 1}' if mark is not None else ''
        raise ConfigError([f'network profiles file {path}{where}: invalid YAML: '
                           f"{getattr(exc, 'problem', None) or exc}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get('profiles'), dict):
        raise ConfigError([f"network profiles file {path}: expected a 'profiles:' mapping"])
    profiles = {}
    problems = []
    for name, body in data['profiles'].items():
        body = body or {}
        if not isinstance(body, dict):
            problems.append(f"network profile '{name}': expected a mapping")
            continue
        unknown = sorted(set(body) - {'description', 'both', *DIRECTIONS})
        if unknown:
            problems.append(f"network profile '{name}': unknown key(s) {', '.join(unknown)}; "
                            'allowed: description, both, forward, backward')
            continue
        both = _flatten(body.get('both'))
        profiles[str(name)] = {
            'description': str(body.get('description', '')),
            **{d: {**both, **_flatten(body.get(d))} for d in DIRECTIONS},
        }
    if problems:
        raise ConfigError(problems)
    profiles['_base_dir'] = os.path.dirname(os.path.abspath(path))
    return profiles


def _flatten(mapping, prefix=''):
    out = {}
    for key, value in (mapping or {}).items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def profile_names(profiles):
    return sorted(n for n in profiles if not n.startswith('_'))


def parse_overrides(text):
    """
    Parse ``'forward.delay=0.05; both.loss.p=0.01'`` into ``[(direction, field, value)]``.

    Raise :class:`ConfigError` naming the bad entry.
    """
    entries = []
    problems = []
    for item in (text or '').replace('\n', ';').split(';'):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition('=')
        direction, _dot, name = key.strip().partition('.')
        if not sep or not name:
            problems.append(f"override {item!r}: expected '<direction>.<field>=<value>', "
                            "e.g. 'forward.delay=0.05'")
            continue
        if direction not in (*DIRECTIONS, 'both'):
            problems.append(f'override {item!r}: unknown direction {direction!r}; allowed: '
                            'forward, backward, both')
            continue
        try:
            value = yaml.safe_load(raw.strip()) if raw.strip() else ''
        except yaml.YAMLError:
            value = raw.strip()
        entries.append((direction, name, value))
    if problems:
        raise ConfigError(problems)
    return entries


def resolve(profiles, name, overrides=''):
    """
    Return the :class:`Resolved` profile ``name`` with ``overrides`` applied.

    Raise :class:`ConfigError` with one line per problem, each naming the profile or the
    override, the field and its allowed values.
    """
    if name not in profiles or name.startswith('_'):
        raise ConfigError([f'network profile {name!r} is unknown; known profiles: '
                           f"{', '.join(profile_names(profiles))}"])
    fields = {d: dict(profiles[name][d]) for d in DIRECTIONS}
    origin = {d: dict.fromkeys(fields[d], f'profile {name!r}') for d in DIRECTIONS}
    for direction, field, value in parse_overrides(overrides):
        for d in (DIRECTIONS if direction == 'both' else (direction,)):
            fields[d][field] = value
            origin[d][field] = f'override {direction}.{field}={value!r}'
    problems = []
    links = {}
    for d in DIRECTIONS:
        link, found = _build(fields[d], origin[d], d, profiles.get('_base_dir', '.'))
        links[d] = link
        problems += found
    if problems:
        raise ConfigError(problems)
    return Resolved(name, profiles[name]['description'], links['forward'], links['backward'])


def _build(fields, origin, direction, base_dir):
    values = {}
    problems = []
    for key, value in fields.items():
        label = f'{origin[key]}: field {direction}.{key}'
        if key not in FIELDS:
            problems.append(f'{label} is unknown; known fields: {", ".join(FIELDS)}')
            continue
        attr, spec = FIELDS[key]
        if key == 'outage.windows' and isinstance(value, (list, tuple)) and all(
                isinstance(v, (list, tuple)) for v in value):
            value = [x for pair in value for x in pair]    # [[start, duration], ...]
        problem = spec.validate(value)
        if problem:
            problems.append(label + problem.split(f"parameter '{spec.name}'", 1)[-1])
            continue
        values[attr] = spec.coerce(value)
    if problems:
        return None, problems

    def where(key):
        return origin.get(key, 'defaults') + ': '

    windows = values.pop('outage_windows', [])
    if len(windows) % 2 or any(v < 0.0 for v in windows[0::2]) or any(
            v <= 0.0 for v in windows[1::2]):
        problems.append(where('outage.windows') + f'field {direction}.outage.windows: '
                        'must be start, duration pairs '
                        f'(start >= 0 s, duration > 0 s), got {windows!r}')
    values['outage_windows'] = tuple(zip(windows[0::2], windows[1::2]))
    on, off = values.get('outage_mean_on', 0.0), values.get('outage_mean_off', 0.0)
    if (on > 0.0) != (off > 0.0):
        problems.append(where('outage.mean_on' if on else 'outage.mean_off')
                        + f'fields {direction}.outage.mean_on and .mean_off: set both (> 0 s) '
                        f'for random outages, or neither; got {on} and {off}')
    if values.get('loss_p13', 0.0) + values.get('loss_p14', 0.0) > 1.0:
        problems.append(where('loss.p13') + f'fields {direction}.loss.p13 + loss.p14 must be '
                        '<= 1')
    if values.get('loss_p31', 1.0) + values.get('loss_p32', 0.0) > 1.0:
        problems.append(where('loss.p31') + f'fields {direction}.loss.p31 + loss.p32 must be '
                        '<= 1')
    trace = values.pop('trace', '')
    if trace:
        path = trace if os.path.isabs(trace) else os.path.join(base_dir, trace)
        try:
            with open(path) as handle:
                values['trace'] = parse_trace(handle.read(), os.path.basename(path))
        except OSError as exc:
            problems.append(where('trace') + f'field {direction}.trace: cannot read {path}: '
                            f'{exc.strerror}')
        except ValueError as exc:
            problems.append(where('trace') + f'field {direction}.trace: {exc}')
    if problems:
        return None, problems
    return LinkConfig(**values), []


def summary(link):
    """Describe a LinkConfig in one short line for logs (non-default fields only)."""
    default = LinkConfig()
    parts = []
    for key, (attr, _spec) in FIELDS.items():
        value = getattr(link, attr)
        if attr == 'trace':
            if value is not None:
                parts.append(f'trace={value.source}')
        elif value != getattr(default, attr):
            parts.append(f'{key}={value:g}' if isinstance(value, float) and not isinstance(
                value, bool) and math.isfinite(value) else f'{key}={value}')
    return ', '.join(parts) or 'no impairment'
