"""One command source per arm (core/command_source.py)."""
from telesurgery_ros.core.command_source import (
    ACCEPT, CommandSource, node_name, SECOND, SEVERAL, UNKNOWN)

RELAY, INTRUDER, CONSOLE2 = b'r' * 16, b'i' * 16, b'c' * 16


def test_the_only_publisher_is_pinned_and_any_other_is_refused_and_named():
    src = CommandSource('psm1/servo_cp')
    assert src.accept(RELAY, 0.0) == UNKNOWN            # not in the graph yet
    src.update_graph({RELAY: 'network_relay'})
    assert src.accept(RELAY, 0.0) == ACCEPT and src.pinned == RELAY
    src.update_graph({RELAY: 'network_relay', INTRUDER: 'intruder'})
    assert src.accept(INTRUDER, 1.0) == SECOND
    assert src.accept(RELAY, 1.001) == ACCEPT
    assert src.second_source == 1
    assert src.reason(SECOND) == 'second command source on psm1/servo_cp: node intruder'
    assert src.intruder.time == 1.0


def test_two_publishers_before_any_pin_are_both_refused():
    src = CommandSource('psm1/servo_cp')
    src.update_graph({CONSOLE2: 'master_console_2', RELAY: 'network_relay'})
    assert src.accept(RELAY, 0.0) == SEVERAL
    assert src.accept(CONSOLE2, 0.0) == SEVERAL
    assert src.pinned is None and src.second_source == 2
    assert src.reason(SEVERAL) == ('several command sources on psm1/servo_cp: nodes '
                                   'master_console_2, network_relay')


def test_a_new_source_only_after_the_old_one_has_gone_and_the_change_is_reported():
    src = CommandSource('psm1/servo_cp')
    src.update_graph({RELAY: 'network_relay', INTRUDER: 'intruder'})
    src.pinned, src.pinned_name = RELAY, 'network_relay'
    assert src.accept(INTRUDER, 0.0) == SECOND
    assert src.update_graph({INTRUDER: 'intruder'}) == 'network_relay'   # the relay is gone
    assert src.pinned is None
    assert src.accept(INTRUDER, 1.0) == ACCEPT
    assert src.just_changed and src.changes == 1 and src.pinned_name == 'intruder'
    assert src.accept(INTRUDER, 1.002) == ACCEPT and not src.just_changed


def test_node_names():
    assert node_name('/', 'network_relay') == 'network_relay'
    assert node_name('/arm1', 'network_relay') == 'arm1/network_relay'
