"""Estimated call quality: a simplified E-model (ITU-T G.107) from loss, delay and codec.

Only the terms a media stack can measure are modelled: the basic signal-to-noise ratio with the
default circuit parameters (R = 93.2 for a perfect narrowband call), the delay impairment Idd
(G.107 §7.4) from the one-way mouth-to-ear delay, and the effective equipment impairment
Ie,eff (G.107 §7.5) from codec and packet loss. Echo and loudness terms are taken at their
defaults (well-controlled echo). MOS follows from R by G.107 Annex B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from media.stats import Snapshot

if TYPE_CHECKING:
    from media.session import RtpSessionStats

R_DEFAULT = 93.2
"""R with every G.107 parameter at its default (Ro - Is - Idte at T = 0)."""


@dataclass(frozen=True)
class CodecImpairment:
    """Equipment impairment figures of a codec (ITU-T G.113 Appendix I)."""

    ie: float
    """Equipment impairment factor without loss."""
    bpl: float
    """Packet-loss robustness factor."""


G711_PLC = CodecImpairment(ie=0.0, bpl=25.1)
"""G.711 with packet loss concealment (G.711 Appendix I), which the jitter buffer does."""
G711_NO_PLC = CodecImpairment(ie=0.0, bpl=4.3)
"""G.711 with lost frames played as silence."""

_IMPAIRMENTS = {"PCMU": G711_PLC, "PCMA": G711_PLC}


def impairment_for(codec_name: str, *, plc: bool = True) -> CodecImpairment:
    """The impairment figures of a codec by encoding name; ValueError when unknown."""
    name = codec_name.upper()
    if name in _IMPAIRMENTS:
        return _IMPAIRMENTS[name] if plc else G711_NO_PLC
    raise ValueError(f"no E-model impairment figures for codec {codec_name!r}")


def delay_impairment(one_way_delay_ms: float) -> float:
    """Idd (G.107 §7.4): impairment of a mouth-to-ear delay Ta in ms; 0 up to 100 ms."""
    if one_way_delay_ms <= 100.0:
        return 0.0
    x = math.log10(one_way_delay_ms / 100.0) / math.log10(2.0)
    return 25.0 * (math.pow(1 + x**6, 1 / 6) - 3 * math.pow(1 + (x / 3) ** 6, 1 / 6) + 2)


def effective_equipment_impairment(
    impairment: CodecImpairment, loss_percent: float, burst_ratio: float = 1.0
) -> float:
    """Ie,eff (G.107 §7.5, formula 7-29): Ie + (95 - Ie) x Ppl / (Ppl / BurstR + Bpl)."""
    if not 0 <= loss_percent <= 100:
        raise ValueError(f"loss percentage must be in [0, 100], got {loss_percent}")
    if burst_ratio <= 0:
        raise ValueError("burst ratio must be positive")
    ie, bpl = impairment.ie, impairment.bpl
    if loss_percent == 0:
        return ie
    return ie + (95 - ie) * loss_percent / (loss_percent / burst_ratio + bpl)


def r_factor(
    *,
    loss_percent: float,
    one_way_delay_ms: float,
    impairment: CodecImpairment = G711_PLC,
    burst_ratio: float = 1.0,
    advantage: float = 0.0,
) -> float:
    """The transmission rating R = 93.2 - Idd - Ie,eff + A (G.107 §7.1, simplified)."""
    return (
        R_DEFAULT
        - delay_impairment(one_way_delay_ms)
        - effective_equipment_impairment(impairment, loss_percent, burst_ratio)
        + advantage
    )


def mos_from_r(r: float) -> float:
    """Estimated MOS (conversational quality) from R, G.107 Annex B (formula B-4)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


@dataclass(frozen=True)
class QualityEstimate(Snapshot):
    """The E-model result for the call report, with the inputs it came from."""

    r_factor: float
    mos: float
    loss_percent: float
    one_way_delay: float
    """Seconds, mouth to ear."""


def one_way_delay(
    round_trip_time: float | None, jitter_buffer_delay: float, ptime: float
) -> float:
    """Mouth-to-ear delay estimate in seconds: half the RTT, the jitter buffer, one frame."""
    return (round_trip_time or 0.0) / 2 + jitter_buffer_delay + ptime


def estimate_quality(
    *,
    loss_fraction: float,
    one_way_delay: float,
    impairment: CodecImpairment = G711_PLC,
    burst_ratio: float = 1.0,
) -> QualityEstimate:
    """R and MOS from a loss fraction (0..1) and a one-way delay in seconds."""
    loss_percent = 100.0 * min(1.0, max(0.0, loss_fraction))
    r = r_factor(
        loss_percent=loss_percent,
        one_way_delay_ms=1000.0 * one_way_delay,
        impairment=impairment,
        burst_ratio=burst_ratio,
    )
    return QualityEstimate(r, mos_from_r(r), loss_percent, one_way_delay)


def estimate_from_stats(
    stats: RtpSessionStats, ptime: float, impairment: CodecImpairment = G711_PLC
) -> QualityEstimate | None:
    """The quality of what we hear on one stream, from its session statistics.

    Loss is the cumulative loss of the received stream (RFC 3550 A.3); delay is half the RTT
    (when RTCP measured one) plus the jitter buffer's delay plus one frame of ``ptime`` seconds.
    None before anything was received.
    """
    inbound = stats.inbound
    if inbound is None:
        return None
    lost = max(0, inbound.packets_lost)
    expected = inbound.packets_received + lost
    loss = lost / expected if expected else 0.0
    rtt = stats.remote_inbound.round_trip_time if stats.remote_inbound is not None else None
    delay = one_way_delay(rtt, stats.jitter_buffer.jitter_buffer_delay, ptime)
    return estimate_quality(loss_fraction=loss, one_way_delay=delay, impairment=impairment)
