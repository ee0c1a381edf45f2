"""SIP transaction timers: RFC 3261 Table 4 (§17, §A) with RFC 6026's timers L and M.

All values derive from three estimates: T1 (round-trip time), T2 (the cap of a retransmission
interval) and T4 (how long the network may hold a message). Timers that only exist to absorb
retransmissions over UDP (D, I, J, K) are zero on a reliable transport, which means "at once".

=====  ==========================  =============================================================
Timer  Value                       Meaning
=====  ==========================  =============================================================
A      T1, doubling                INVITE request retransmission (UDP only)
B      64*T1                       INVITE client transaction timeout
D      >32 s UDP, 0 reliable       wait for response retransmissions (INVITE client)
E      T1, doubling up to T2       non-INVITE request retransmission (UDP only)
F      64*T1                       non-INVITE client transaction timeout
G      T1, doubling up to T2       INVITE final response retransmission (UDP only)
H      64*T1                       wait for ACK receipt
I      T4 UDP, 0 reliable          wait for ACK retransmissions
J      64*T1 UDP, 0 reliable       wait for non-INVITE request retransmissions
K      T4 UDP, 0 reliable          wait for non-INVITE response retransmissions
L      64*T1                       INVITE server Accepted state (RFC 6026 §8.7)
M      64*T1                       INVITE client Accepted state (RFC 6026 §8.4)
=====  ==========================  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "TimerSettings", "next_interval", "timer_a", "timer_b", "timer_d", "timer_e", "timer_f",
    "timer_g", "timer_h", "timer_i", "timer_j", "timer_k", "timer_l", "timer_m",
]


@dataclass(frozen=True)
class TimerSettings:
    """The tunable estimates behind every transaction timer (RFC 3261 Table 4)."""

    #: T1, the round-trip time estimate in seconds (RFC 3261 §17.1.1.1); 500 ms by default.
    t1: float = 0.5
    #: T2, the longest interval between retransmissions of non-INVITE requests and INVITE
    #: responses, in seconds.
    t2: float = 4.0
    #: T4, the longest time a message may stay in the network, in seconds.
    t4: float = 5.0
    #: Timer D on an unreliable transport, in seconds; RFC 3261 asks for at least 32 s.
    timer_d_unreliable: float = 32.0

    def __post_init__(self) -> None:
        if self.t1 <= 0 or self.t2 <= 0 or self.t4 <= 0:
            raise ValueError("T1, T2 and T4 must be positive")
        if self.t2 < self.t1:
            raise ValueError(f"T2 ({self.t2}) must not be smaller than T1 ({self.t1})")
        if self.timer_d_unreliable < 0:
            raise ValueError("timer D must not be negative")


def timer_a(s: TimerSettings) -> float:
    """First INVITE retransmission interval; it doubles with no cap (§17.1.1.2)."""
    return s.t1


def timer_b(s: TimerSettings) -> float:
    """INVITE client transaction timeout (§17.1.1.2)."""
    return 64 * s.t1


def timer_d(s: TimerSettings, reliable: bool) -> float:
    """How long a completed INVITE client transaction re-ACKs retransmitted finals (§17.1.1.2)."""
    return 0.0 if reliable else s.timer_d_unreliable


def timer_e(s: TimerSettings) -> float:
    """First non-INVITE retransmission interval; doubles up to T2 (§17.1.2.2)."""
    return s.t1


def timer_f(s: TimerSettings) -> float:
    """Non-INVITE client transaction timeout (§17.1.2.2)."""
    return 64 * s.t1


def timer_g(s: TimerSettings) -> float:
    """First retransmission interval of an INVITE final response; doubles up to T2 (§17.2.1)."""
    return s.t1


def timer_h(s: TimerSettings) -> float:
    """How long an INVITE server transaction waits for the ACK of a non-2xx final (§17.2.1)."""
    return 64 * s.t1


def timer_i(s: TimerSettings, reliable: bool) -> float:
    """How long a confirmed INVITE server transaction absorbs ACK retransmissions (§17.2.1)."""
    return 0.0 if reliable else s.t4


def timer_j(s: TimerSettings, reliable: bool) -> float:
    """How long a completed non-INVITE server transaction re-sends its final (§17.2.2)."""
    return 0.0 if reliable else 64 * s.t1


def timer_k(s: TimerSettings, reliable: bool) -> float:
    """How long a completed non-INVITE client transaction absorbs response copies (§17.1.2.2)."""
    return 0.0 if reliable else s.t4


def timer_l(s: TimerSettings) -> float:
    """How long an INVITE server transaction stays Accepted after a 2xx (RFC 6026 §8.7)."""
    return 64 * s.t1


def timer_m(s: TimerSettings) -> float:
    """How long an INVITE client transaction stays Accepted after a 2xx (RFC 6026 §8.4)."""
    return 64 * s.t1


def next_interval(interval: float, s: TimerSettings, *, capped: bool) -> float:
    """The retransmission interval after ``interval``: doubled, and capped at T2 when asked.

    Timer A doubles without a cap (§17.1.1.2); timers E and G stop growing at T2 (§17.1.2.2,
    §17.2.1); the 2xx retransmission of a UAS core behaves like G (§13.3.1.4).
    """
    doubled = 2 * interval
    return min(doubled, s.t2) if capped else doubled
