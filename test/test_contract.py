"""The safety state encoding and topic names that every node relies on."""
import pytest

from telesurgery_ros.core.contract import (
    arm_topics, console_topic, frames, SafetyState, SafetyStatus)


def test_safety_status_round_trip():
    status = SafetyStatus(SafetyState.HOLD, 'commands stale (0.134 s > 0.100 s)')
    assert status.encode() == 'HOLD: commands stale (0.134 s > 0.100 s)'
    assert SafetyStatus.decode(status.encode()) == status
    assert SafetyStatus.decode('NOMINAL') == SafetyStatus(SafetyState.NOMINAL, '')


def test_unknown_state_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match='unknown safety state'):
        SafetyStatus.decode('FINE: all good')


def test_severity_order_and_motion():
    assert SafetyState.NOMINAL < SafetyState.DEGRADED < SafetyState.HOLD < SafetyState.ESTOP
    assert [s.allows_motion for s in SafetyState] == [True, True, False, False]


def test_names_are_relative_and_per_arm():
    topics = arm_topics('psm2')
    assert topics['servo_cp'] == 'psm2/servo_cp'
    assert console_topic(topics['servo_cp']) == 'console/psm2/servo_cp'
    assert not any(t.startswith('/') for t in topics.values())
    assert frames('psm2')['rcm'] == 'psm2_rcm'
