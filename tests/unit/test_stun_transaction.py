"""STUN client transaction (ice.transaction): RFC 8489 §6.2.1 schedule with literal times."""

from __future__ import annotations

import pytest

from ice.stun import Address, Message, MessageClass, Method
from ice.transaction import StunTransaction, TransactionState

SERVER: Address = ("192.0.2.10", 3478)
TID = bytes(range(12))


def _transaction(now: float = 0.0, *, rto: float = 0.5, max_transmissions: int = 7,
                 last_wait_factor: int = 16, max_rto: float | None = None,
                 reliable: bool = False) -> StunTransaction:
    request = Message(Method.BINDING, MessageClass.REQUEST, TID, {})
    return StunTransaction(request, request.encode(), SERVER, now, rto=rto,
                           max_transmissions=max_transmissions,
                           last_wait_factor=last_wait_factor, max_rto=max_rto,
                           reliable=reliable)


def _run(transaction: StunTransaction) -> list[float]:
    """Fire every timer on time; return the times at which bytes were retransmitted."""
    sent = []
    while (deadline := transaction.next_timer()) is not None:
        if transaction.handle_timer(deadline) is not None:
            sent.append(deadline)
    return sent


def test_default_schedule_rfc8489() -> None:
    """RTO 500 ms, Rc 7, Rm 16: sends at 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5; timeout at 39.5 s."""
    transaction = _transaction(100.0)
    assert transaction.transmissions == 1 and transaction.sent_at == 100.0
    assert transaction.next_timer() == 100.5
    sent = _run(transaction)
    assert sent == [100.5, 101.5, 103.5, 107.5, 115.5, 131.5]
    assert transaction.transmissions == 7
    assert transaction.timed_out and transaction.done
    assert transaction.state is TransactionState.TIMED_OUT
    assert transaction.next_timer() is None


def test_timeout_happens_exactly_at_39_5_seconds() -> None:
    """Just before the last wait ends nothing happens; at 39.5 s the transaction times out."""
    transaction = _transaction(0.0)
    for t in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5):
        assert transaction.handle_timer(t) == transaction.data
    assert transaction.next_timer() == 39.5
    assert transaction.handle_timer(39.4) is None and not transaction.timed_out
    assert transaction.handle_timer(39.5) is None and transaction.timed_out


def test_early_timer_does_nothing() -> None:
    """A timer fired before the deadline neither sends nor counts."""
    transaction = _transaction(0.0)
    assert transaction.handle_timer(0.49) is None
    assert transaction.transmissions == 1 and transaction.next_timer() == 0.5


def test_max_rto_caps_the_interval() -> None:
    """With max_rto the doubling stops at the cap (ICE may bound its RTO)."""
    transaction = _transaction(0.0, rto=0.25, max_transmissions=5, max_rto=1.0,
                               last_wait_factor=4)
    assert _run(transaction) == [0.25, 0.75, 1.75, 2.75]
    assert transaction.timed_out


def test_last_wait_is_rm_times_initial_rto_even_when_capped() -> None:
    """After the last send the wait is Rm x the initial RTO (here 2.75 + 4 x 0.25 = 3.75)."""
    transaction = _transaction(0.0, rto=0.25, max_transmissions=5, max_rto=1.0,
                               last_wait_factor=4)
    for t in (0.25, 0.75, 1.75, 2.75):
        transaction.handle_timer(t)
    assert transaction.next_timer() == 3.75


def test_custom_rto_and_transmissions() -> None:
    """RFC 8445 §14.3 lets ICE choose RTO; Rc and Rm are parameters."""
    transaction = _transaction(10.0, rto=0.125, max_transmissions=3, last_wait_factor=2)
    assert _run(transaction) == [10.125, 10.375]
    assert transaction.timed_out


def test_single_transmission_waits_rm_times_rto() -> None:
    """Rc = 1: no retransmission, timeout after Rm x RTO."""
    transaction = _transaction(0.0, max_transmissions=1)
    assert transaction.next_timer() == 8.0
    assert _run(transaction) == []
    assert transaction.timed_out


def test_reliable_transport_sends_once_and_waits_ti() -> None:
    """RFC 8489 §6.2.2: over TCP/TLS one send and a 39.5 s timeout."""
    transaction = _transaction(5.0, reliable=True)
    assert transaction.next_timer() == 44.5
    assert transaction.handle_timer(44.0) is None
    assert transaction.handle_timer(44.5) is None
    assert transaction.timed_out and transaction.transmissions == 1


def test_late_timer_shifts_the_schedule() -> None:
    """The next interval counts from when the retransmission really went out."""
    transaction = _transaction(0.0)
    assert transaction.handle_timer(0.75) is not None
    assert transaction.next_timer() == 1.75


def test_complete_stops_retransmission() -> None:
    """A response ends the transaction: no timers, no sends, not timed out."""
    transaction = _transaction(0.0)
    transaction.handle_timer(0.5)
    transaction.complete()
    assert transaction.done and not transaction.timed_out
    assert transaction.state is TransactionState.ANSWERED
    assert transaction.next_timer() is None
    assert transaction.handle_timer(100.0) is None


def test_cancel_stops_everything() -> None:
    """A cancelled transaction has no timer and never times out."""
    transaction = _transaction(0.0)
    transaction.cancel()
    assert transaction.done and not transaction.timed_out
    assert transaction.state is TransactionState.CANCELLED
    assert transaction.next_timer() is None
    transaction.complete()  # no effect once done
    assert transaction.state is TransactionState.CANCELLED


def test_matches_by_transaction_id_and_source() -> None:
    """RFC 8489 §6.3.3: a response matches on transaction id; ICE also checks the source."""
    transaction = _transaction(0.0)
    response = Message(Method.BINDING, MessageClass.SUCCESS, TID, {})
    other = Message(Method.BINDING, MessageClass.SUCCESS, bytes(12), {})
    assert transaction.matches(response, SERVER)
    assert not transaction.matches(response, ("192.0.2.11", 3478))
    assert not transaction.matches(response, ("192.0.2.10", 3479))
    assert not transaction.matches(other, SERVER)


def test_bad_parameters_rejected() -> None:
    """Non-positive RTO or zero transmissions are the caller's fault."""
    with pytest.raises(ValueError, match="rto"):
        _transaction(0.0, rto=0.0)
    with pytest.raises(ValueError, match="max_transmissions"):
        _transaction(0.0, max_transmissions=0)
