"""
Declarative parameter tables, validated without ROS.

Each node describes its parameters once, as a tuple of :class:`Param` (the model is the code
that generate_parameter_library generates for Python). The ROS adapter
(:mod:`telesurgery_ros.ros_params`) turns the table into declared parameters with descriptors;
this module validates values and produces messages that name the parameter and the allowed
range, so a bad launch argument never ends in a traceback.
"""
from dataclasses import dataclass, field
import difflib
import math
from types import SimpleNamespace


class ConfigError(ValueError):
    """One or more parameters are invalid; ``str()`` lists every problem, one per line."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems))


_TYPE_NAMES = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string'}
_PLURAL_NAMES = {bool: 'booleans', int: 'integers', float: 'numbers', str: 'strings'}


@dataclass(frozen=True)
class Param:
    """
    One parameter: name (dotted for hierarchy), default, description and bounds.

    The type is the default's type (lists: the type of ``item_type``). ``low``/``high`` bound
    numbers (inclusive); ``choices`` bounds strings; ``check`` is an extra predicate returning
    an error text or ``None``.
    """

    name: str
    default: object
    description: str
    unit: str = ''
    low: float = None
    high: float = None
    choices: tuple = ()
    read_only: bool = False
    item_type: type = None
    check: object = field(default=None, compare=False)

    @property
    def type(self):  # noqa: A003 (the parameter's type, as in rclpy)
        return list if isinstance(self.default, (list, tuple)) else type(self.default)

    def allowed(self):
        """Describe the allowed values in words, e.g. ``'0.0 to 1.0 s'``."""
        unit = f' {self.unit}' if self.unit else ''
        if self.choices:
            return 'one of ' + ', '.join(repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return f'{self.low} to {self.high}{unit}'
        if self.low is not None:
            return f'>= {self.low}{unit}'
        if self.high is not None:
            return f'<= {self.high}{unit}'
        if self.type is list:
            return f'a list of {_PLURAL_NAMES.get(self.item_type, "values")}'
        return _TYPE_NAMES.get(self.type, repr(self.type))

    def full_description(self):
        unit = f' [{self.unit}]' if self.unit else ''
        return f'{self.description}{unit}; allowed: {self.allowed()}'

    def coerce(self, value):
        """Return ``value`` as this parameter's type; integers are accepted for numbers."""
        kind = self.type
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is list and isinstance(value, tuple):
            value = list(value)
        if kind is list and self.item_type is float:
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                    for v in value]
        return value

    def validate(self, value):
        """Return an error message naming the parameter and the allowed values, or None."""
        value = self.coerce(value)
        kind = self.type
        ok_type = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is list and ok_type and self.item_type is not None:
            ok_type = all(isinstance(v, self.item_type) for v in value)
        if not ok_type:
            return (f"parameter '{self.name}' must be {self.allowed()}, "
                    f'got {value!r} ({type(value).__name__})')
        if kind is float and not math.isfinite(value):
            return f"parameter '{self.name}' must be finite ({self.allowed()}), got {value!r}"
        if kind in (int, float):
            if (self.low is not None and value < self.low) or (
                    self.high is not None and value > self.high):
                return f"parameter '{self.name}' must be {self.allowed()}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"parameter '{self.name}' must be {self.allowed()}, got {value!r}"
        if self.check is not None:
            problem = self.check(value)
            if problem:
                return f"parameter '{self.name}': {problem}"
        return None


def check_table(table):
    """Raise ValueError if a table is inconsistent (duplicate names, invalid defaults)."""
    names = [p.name for p in table]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'duplicate parameters: {dupes}')
    for p in table:
        problem = p.validate(p.default)
        if problem:
            raise ValueError(f'invalid default: {problem}')


def validate_values(table, values):
    """Validate a mapping name -> value against ``table``; return the list of problems."""
    by_name = {p.name: p for p in table}
    problems = []
    for name, value in values.items():
        spec = by_name.get(name)
        if spec is None:
            problems.append(f"unknown parameter '{name}'")
            continue
        problem = spec.validate(value)
        if problem:
            problems.append(problem)
    return problems


def unknown_problems(given, known, owner, explain=None):
    """
    Return one problem per name in ``given`` that is not in ``known``, sorted.

    A misspelt parameter would otherwise be ignored without a word and the node would run
    with the default (``-p profle:=satellite`` on the relay: no satellite). The line names the
    node (``owner``) and the closest known name when there is one. ``explain(name)`` may
    return a better line for a name (e.g. one that belongs to another role).
    """
    known = sorted(known)
    problems = []
    for name in sorted(set(given) - set(known)):
        line = explain(name) if explain is not None else None
        if line is None:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            line = (f"parameter '{name}': not a parameter of {owner}"
                    + (f" (did you mean '{close[0]}'?)" if close else ''))
        problems.append(line)
    return problems


def to_namespace(table, values):
    """
    Return validated values as a nested namespace (``cfg.limits.max_speed``).

    Missing values take their default. Raise :class:`ConfigError` listing every problem.
    """
    merged = {p.name: values.get(p.name, p.default) for p in table}
    unknown = {k: v for k, v in values.items() if k not in merged}
    problems = validate_values(table, {**merged, **unknown})
    if problems:
        raise ConfigError(problems)
    root = SimpleNamespace()
    for spec in table:
        node = root
        *parents, leaf = spec.name.split('.')
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, SimpleNamespace())
            node = getattr(node, part)
        setattr(node, leaf, spec.coerce(merged[spec.name]))
    return root
