"""Simplified E-model (ITU-T G.107): R from loss, delay and codec; MOS from R (Annex B)."""

from __future__ import annotations

import itertools
import random

import pytest

from media.codecs import default_registry
from media.quality import (
    G711_NO_PLC,
    G711_PLC,
    delay_impairment,
    effective_equipment_impairment,
    estimate_from_stats,
    estimate_quality,
    impairment_for,
    mos_from_r,
    one_way_delay,
    r_factor,
)
from media.session import RtpSession


def test_default_r_gives_mos_441() -> None:
    """The G.107 default connection, R = 93.2, rates MOS 4.41."""
    r = r_factor(loss_percent=0, one_way_delay_ms=0)
    assert r == pytest.approx(93.2)
    assert mos_from_r(r) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize(("r", "mos"), [(-5, 1.0), (0, 1.0), (50, 2.575), (100, 4.5), (120, 4.5)])
def test_mos_formula_points(r: float, mos: float) -> None:
    """Annex B: 1 + 0.035R + R(R-60)(100-R)7e-6 inside (0, 100), clamped outside."""
    assert mos_from_r(r) == pytest.approx(mos, abs=1e-9)


def test_delay_impairment_known_values() -> None:
    """Idd is 0 up to 100 ms, then 3.04 at 200 ms (X = 1), 14.76 at 300 ms, 24.07 at 400 ms."""
    assert delay_impairment(50) == 0.0 and delay_impairment(100) == 0.0
    assert delay_impairment(200) == pytest.approx(3.044, abs=0.005)
    assert delay_impairment(300) == pytest.approx(14.76, abs=0.01)
    assert delay_impairment(400) == pytest.approx(24.07, abs=0.01)


def test_effective_impairment_g711() -> None:
    """Ie,eff = 95 Ppl / (Ppl + Bpl) for G.711 (Ie = 0) with random loss."""
    assert effective_equipment_impairment(G711_PLC, 0) == 0
    assert effective_equipment_impairment(G711_PLC, 1) == pytest.approx(95 / 26.1)
    assert effective_equipment_impairment(G711_NO_PLC, 1) == pytest.approx(95 / 5.3)
    with pytest.raises(ValueError):
        effective_equipment_impairment(G711_PLC, 150)


def test_five_percent_loss_with_plc() -> None:
    """5% random loss with PLC: R = 93.2 - 95x5/30.1 = 77.42, MOS about 3.92."""
    estimate = estimate_quality(loss_fraction=0.05, one_way_delay=0.03)
    assert estimate.r_factor == pytest.approx(93.2 - 95 * 5 / 30.1)
    assert estimate.mos == pytest.approx(3.92, abs=0.01)
    assert estimate.to_dict()["rFactor"] == pytest.approx(estimate.r_factor)


def test_mos_falls_with_loss_and_delay() -> None:
    """More loss or more delay never improves the estimate; PLC helps."""
    mos = [estimate_quality(loss_fraction=p / 100, one_way_delay=0.05).mos for p in range(0, 21)]
    assert all(a > b for a, b in itertools.pairwise(mos))
    delays = [estimate_quality(loss_fraction=0, one_way_delay=d / 1000).mos
              for d in range(100, 600, 50)]
    assert all(a > b for a, b in itertools.pairwise(delays))
    with_plc = estimate_quality(loss_fraction=0.02, one_way_delay=0.05).mos
    without = estimate_quality(loss_fraction=0.02, one_way_delay=0.05, impairment=G711_NO_PLC).mos
    assert with_plc > without


def test_one_way_delay_and_codec_lookup() -> None:
    """Delay estimate is RTT/2 + buffer + a frame; PCMU/PCMA have G.711 figures."""
    assert one_way_delay(0.06, 0.04, 0.02) == pytest.approx(0.09)
    assert one_way_delay(None, 0.04, 0.02) == pytest.approx(0.06)
    assert impairment_for("pcma") == G711_PLC and impairment_for("PCMU", plc=False) == G711_NO_PLC
    with pytest.raises(ValueError):
        impairment_for("opus")


def test_estimate_from_session_stats() -> None:
    """A stream with 2 of 100 packets lost rates like 2% loss; nothing received gives None."""
    codec = default_registry().create("PCMU")
    sender = RtpSession(codec, random.Random(1), 0.0)
    receiver = RtpSession(codec, random.Random(2), 0.0)
    assert estimate_from_stats(receiver.stats(), 0.02) is None
    for k in range(100):
        data = sender.send_frame(bytes(320), 0.02 * k)
        if k not in (30, 60):
            receiver.receive_rtp(data, ("192.0.2.1", 4000), 0.02 * k + 0.01)
        receiver.read_frame(0.02 * k + 0.015)
    estimate = estimate_from_stats(receiver.stats(), 0.02)
    assert estimate is not None
    assert estimate.loss_percent == pytest.approx(2.0)
    assert estimate.mos == pytest.approx(
        estimate_quality(loss_fraction=0.02, one_way_delay=estimate.one_way_delay).mos
    )
    assert 4.0 < estimate.mos < 4.41
