"""The pure state machine against RFC 9568 section 6.4 (with fake time)."""

from __future__ import annotations

import pytest

from vrrp.state import Machine, SendAdvert, SendGarp, State, Transition

A, B = "10.99.0.1", "10.99.0.2"


def machine(priority=100, ip=B, **kw) -> Machine:
    return Machine(priority=priority, advert_interval_cs=100, primary_ip=ip, **kw)


def states(actions):
    return [a.new for a in actions if isinstance(a, Transition)]


def adverts(actions):
    return [a.priority for a in actions if isinstance(a, SendAdvert)]


def test_timers_follow_rfc_9568():
    m = machine(priority=100)
    assert m.skew_time_s == pytest.approx(156 / 256)  # ((256 - 100) * 1 s) / 256
    assert m.master_down_interval_s == pytest.approx(3 + 156 / 256)


def test_startup_listens_then_takes_over_when_nobody_speaks():
    m = machine()
    assert states(m.start(0.0)) == [State.BACKUP]
    assert m.next_deadline() == pytest.approx(m.master_down_interval_s)
    assert m.on_timer(3.0) == []
    acts = m.on_timer(3.61)
    assert adverts(acts) == [100] and states(acts) == [State.MASTER]
    assert m.next_deadline() == pytest.approx(4.61)
    assert adverts(m.on_timer(4.61)) == [100]


def test_owner_becomes_master_at_once():
    m = machine(priority=255)
    acts = m.start(0.0)
    assert adverts(acts) == [255] and states(acts) == [State.MASTER]


def test_advert_from_master_resets_down_timer_and_learns_its_interval():
    m = machine()
    m.start(0.0)
    m.on_advert(1.0, A, 150, 50)
    assert m.master_adver_interval_cs == 50 and m.master_ip == A
    assert m.next_deadline() == pytest.approx(1.0 + 1.5 + 156 * 0.5 / 256)


def test_priority_zero_makes_backup_take_over_after_skew():
    m = machine()
    m.start(0.0)
    m.on_advert(1.0, A, 150, 100)
    m.on_advert(1.5, A, 0, 100)
    assert m.next_deadline() == pytest.approx(1.5 + 156 / 256)
    assert states(m.on_timer(1.5 + 156 / 256)) == [State.MASTER]


def test_preempt_ignores_lower_priority_master():
    m = machine(priority=150, ip=A)
    m.start(0.0)
    m.on_advert(1.0, B, 100, 100)  # discarded: the down timer keeps running from start
    assert m.next_deadline() == pytest.approx(3 + 106 / 256)


def test_nopreempt_stays_backup_behind_lower_priority_master():
    m = machine(priority=150, ip=A, preempt=False)
    m.start(0.0)
    m.on_advert(1.0, B, 100, 100)
    assert m.next_deadline() == pytest.approx(1.0 + 3 + 106 / 256)
    assert m.on_timer(3.5) == [] and m.state is State.BACKUP


def test_preempt_delay_holds_off_preemption():
    m = machine(priority=150, ip=A, preempt_delay_s=10.0)
    m.start(0.0)
    for t in range(1, 10):
        m.on_advert(float(t), B, 100, 100)
        assert m.on_timer(float(t)) == []
    assert m.next_deadline() == pytest.approx(9 + 3 + 106 / 256)
    m.on_advert(10.0, B, 100, 100)  # delay over: now discarded
    assert states(m.on_timer(9 + 3 + 106 / 256)) == [State.MASTER]


def _master(priority=100, ip=B) -> Machine:
    m = machine(priority=priority, ip=ip)
    m.start(0.0)
    m.on_timer(10.0)
    assert m.state is State.MASTER
    return m


def test_master_steps_down_for_higher_priority():
    m = _master()
    acts = m.on_advert(11.0, A, 150, 100)
    assert states(acts) == [State.BACKUP] and adverts(acts) == [0]
    assert m.master_ip == A and m.timers.adver_at is None


@pytest.mark.parametrize("peer_ip, steps_down", [("10.99.0.9", True), ("10.99.0.1", False)])
def test_equal_priority_tie_broken_by_primary_ip(peer_ip, steps_down):
    m = _master(ip="10.99.0.5")
    acts = m.on_advert(11.0, peer_ip, 100, 100)
    assert (states(acts) == [State.BACKUP]) is steps_down
    if not steps_down:
        assert adverts(acts) == [100]


def test_master_answers_lower_priority_at_once():
    """RFC 9568: assert mastership immediately, healing a split brain in one exchange."""
    m = _master(priority=150, ip=A)
    acts = m.on_advert(10.3, B, 100, 100)
    assert adverts(acts) == [150] and states(acts) == []
    assert SendGarp() in acts  # clients may have learnt the other master's MAC
    assert m.next_deadline() == pytest.approx(11.3)


def test_master_answers_priority_zero_and_reclaims_clients():
    m = _master()
    acts = m.on_advert(10.2, A, 0, 100)
    assert adverts(acts) == [100] and SendGarp() in acts


def test_shutdown_sends_priority_zero_only_from_master():
    m = _master()
    acts = m.shutdown(12.0)
    assert adverts(acts) == [0] and states(acts) == [State.INITIALIZE]
    b = machine()
    b.start(0.0)
    assert adverts(b.shutdown(1.0)) == []


def test_master_priority_drop_is_advertised_at_once():
    m = _master(priority=150, ip=A)
    assert adverts(m.set_priority(10.5, 90)) == [90]
    assert m.set_priority(10.6, 90) == []


def test_fault_and_recovery():
    m = _master()
    acts = m.fault(11.0, "link")
    assert adverts(acts) == [0] and states(acts) == [State.FAULT]
    assert m.next_deadline() is None
    assert m.fault(11.1, "health") == []
    assert m.clear_fault(11.2, "link") == []  # health still failing
    acts = m.clear_fault(11.3, "health")
    assert states(acts) == [State.INITIALIZE, State.BACKUP]
    assert m.on_advert(11.4, A, 150, 100) == [] and m.master_ip == A


def test_start_while_faulted_does_nothing():
    m = machine()
    assert states(m.fault(0.0, "link")) == [State.FAULT]
    assert m.start(0.1) == []
