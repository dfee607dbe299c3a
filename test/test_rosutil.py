"""The rclpy side of parameter tables: descriptors, start-up errors, run-time changes."""
import subprocess
import sys

import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.rosutil import declare_parameters, sec_to_stamp, stamp_to_sec

TABLE = (
    Param('rate', 500.0, 'command rate', unit='Hz', low=1.0, high=2000.0),
    Param('input', 'trajectory', 'input source', choices=('trajectory', 'replay')),
    Param('low', 1.0, 'lower bound', unit='m'),
    Param('high', 2.0, 'upper bound', unit='m'),
    Param('pairs', [], 'topic pairs', item_type=str),
)


def ordered(cfg):
    return [] if cfg.low < cfg.high else [f"'low' ({cfg.low}) must be below 'high' ({cfg.high})"]


def make_node(overrides=(), on_change=None):
    node = Node('params_under_test', parameter_overrides=list(overrides))
    declare_parameters(node, TABLE, on_change=on_change, cross_check=ordered)
    return node


def test_defaults_and_descriptors(ros_context):
    node = make_node()
    try:
        assert node.config.rate == 500.0 and node.config.input == 'trajectory'
        desc = node.describe_parameter('rate')
        assert desc.description == 'command rate [Hz]; allowed: 1.0 to 2000.0 Hz'
        assert desc.floating_point_range[0].from_value == 1.0
        assert desc.floating_point_range[0].to_value == 2000.0
        assert node.describe_parameter('input').additional_constraints == (
            'one of: trajectory, replay')
    finally:
        node.destroy_node()


@pytest.mark.parametrize('override, message', [
    (Parameter('rate', value=5000.0), "parameter 'rate' must be 1.0 to 2000.0 Hz, got 5000.0"),
    (Parameter('input', value='mouse'), "parameter 'input' must be one of"),
    (Parameter('rate', value='fast'), "parameter 'rate' must be 1.0 to 2000.0 Hz, got 'fast'"),
    (Parameter('low', value=3.0), "'low' (3.0) must be below 'high' (2.0)"),
])
def test_bad_start_up_values_raise_a_config_error_naming_the_parameter(
        ros_context, override, message):
    with pytest.raises(ConfigError) as err:
        make_node([override])
    assert message in str(err.value)


def test_integer_override_for_a_float_parameter_is_accepted(ros_context):
    node = make_node([Parameter('rate', value=100)])
    try:
        assert node.config.rate == 100.0
    finally:
        node.destroy_node()


def test_run_time_changes_are_validated_applied_and_reported(ros_context):
    changes = []
    node = make_node(on_change=lambda cfg, names: changes.append((cfg.rate, names)))
    try:
        result = node.set_parameters([Parameter('rate', value=9999.0)])[0]
        # rclpy checks the descriptor's range first, with its own words.
        assert not result.successful and 'rate' in result.reason and '2000' in result.reason
        result = node.set_parameters([Parameter('input', value='mouse')])[0]
        assert not result.successful and "'input' must be one of" in result.reason
        result = node.set_parameters([Parameter('high', value=0.5)])[0]
        assert not result.successful and "'low' (1.0) must be below 'high' (0.5)" in result.reason
        assert node.config.rate == 500.0 and node.config.high == 2.0 and changes == []
        assert node.set_parameters([Parameter('rate', value=250.0)])[0].successful
        assert node.config.rate == 250.0 and changes == [(250.0, ['rate'])]
    finally:
        node.destroy_node()


def test_stamp_conversion_round_trip():
    stamp = sec_to_stamp(1234.000000789)
    assert (stamp.sec, stamp.nanosec) == (1234, 789)
    assert abs(stamp_to_sec(stamp) - 1234.000000789) < 1e-9


def test_empty_list_parameters_take_overrides_and_default_to_empty(ros_context):
    node = make_node()
    try:
        assert node.config.pairs == []
        assert node.set_parameters([Parameter('pairs', value=['a>b'])])[0].successful
        assert node.config.pairs == ['a>b']
    finally:
        node.destroy_node()
    node = make_node([Parameter('pairs', value=['x>y', 'z>w'])])
    try:
        assert node.config.pairs == ['x>y', 'z>w']
    finally:
        node.destroy_node()


@pytest.mark.parametrize('node, given, expected', [
    ('network_relay', ['profle:=satellite', 'seed:=3'],
     ["[NetworkRelay] configuration error: parameter 'profle': not a parameter of "
      "network_relay (did you mean 'profile'?)"]),
    ('safety_watchdog', ['commands.timeot:=0.2', 'use_sim_time:=false',
                         'qos_overrides./safety/state.publisher.depth:=1'],
     ["[SafetyWatchdog] configuration error: parameter 'commands.timeot': not a parameter of "
      "safety_watchdog (did you mean 'commands.timeout'?)"]),
])
def test_a_misspelt_parameter_stops_the_node_with_one_line(node, given, expected):
    """A typo would otherwise leave the default in force without a word (no satellite)."""
    args = [a for item in given for a in ('-p', item)]
    proc = subprocess.run([sys.executable, '-m', f'telesurgery_ros.nodes.{node}', '--ros-args',
                           *args], capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if 'configuration error' in line]
    print(node, proc.returncode, lines)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert lines == expected
