"""Parameter tables: validation messages name the parameter and the allowed range."""
import math

import pytest

from telesurgery_ros.core.params import (
    check_table, ConfigError, Param, to_namespace, unknown_problems)

TABLE = (
    Param('rate', 500.0, 'command rate', unit='Hz', low=1.0, high=2000.0),
    Param('input', 'trajectory', 'input source', choices=('trajectory', 'replay')),
    Param('limits.max_speed', 0.5, 'fastest tool-tip speed', unit='m/s', low=0.0),
    Param('count', 3, 'a count', low=1, high=10),
    Param('gui', False, 'open the GUI'),
    Param('pairs', ['a', 'b'], 'topic pairs', item_type=str),
    Param('even', 2, 'an even number', check=lambda v: None if v % 2 == 0 else 'must be even'),
)


def test_defaults_build_a_nested_namespace():
    cfg = to_namespace(TABLE, {})
    assert cfg.rate == 500.0 and cfg.input == 'trajectory' and cfg.limits.max_speed == 0.5
    assert cfg.pairs == ['a', 'b'] and cfg.gui is False


def test_integers_are_accepted_for_numbers_and_become_floats():
    cfg = to_namespace(TABLE, {'rate': 100})
    assert cfg.rate == 100.0 and isinstance(cfg.rate, float)


@pytest.mark.parametrize('name, value, expected', [
    ('rate', 5000.0, "parameter 'rate' must be 1.0 to 2000.0 Hz, got 5000.0"),
    ('rate', math.nan, "parameter 'rate' must be finite"),
    ('rate', 'fast', "parameter 'rate' must be 1.0 to 2000.0 Hz, got 'fast' (str)"),
    ('input', 'mouse', "parameter 'input' must be one of 'trajectory', 'replay', got 'mouse'"),
    ('limits.max_speed', -1.0, "parameter 'limits.max_speed' must be >= 0.0 m/s, got -1.0"),
    ('count', True, "parameter 'count' must be 1 to 10, got True (bool)"),
    ('pairs', ['a', 3], "parameter 'pairs' must be a list of strings"),
    ('even', 3, "parameter 'even': must be even"),
    ('nope', 1, "unknown parameter 'nope'"),
])
def test_problems_name_the_parameter_and_the_range(name, value, expected):
    with pytest.raises(ConfigError) as err:
        to_namespace(TABLE, {name: value})
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        to_namespace(TABLE, {'rate': 0.0, 'count': 99})
    assert len(err.value.problems) == 2


def test_inconsistent_tables_are_refused():
    with pytest.raises(ValueError, match='duplicate'):
        check_table((Param('a', 1, 'x'), Param('a', 2, 'y')))
    with pytest.raises(ValueError, match='invalid default'):
        check_table((Param('a', 5, 'x', high=1),))


def test_description_carries_unit_and_range():
    assert TABLE[0].full_description() == 'command rate [Hz]; allowed: 1.0 to 2000.0 Hz'


def test_unknown_names_are_problems_with_the_closest_known_name():
    known = {p.name for p in TABLE}
    assert unknown_problems(['rate', 'gui'], known, 'node') == []
    assert unknown_problems(['limits.max_sped', 'zzz', 'rate'], known, 'node') == [
        "parameter 'limits.max_sped': not a parameter of node (did you mean "
        "'limits.max_speed'?)",
        "parameter 'zzz': not a parameter of node"]


def test_an_unknown_name_can_be_explained_by_the_caller():
    def explain(name):
        return f"parameter '{name}': belongs to the other role" if name == 'delay' else None
    assert unknown_problems(['delay', 'inptu'], {'input'}, 'node', explain) == [
        "parameter 'delay': belongs to the other role",
        "parameter 'inptu': not a parameter of node (did you mean 'input'?)"]
