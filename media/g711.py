"""G.711 µ-law and A-law (ITU-T G.711) over 16-bit little-endian linear PCM.

The conversion runs in C: the standard library's ``audioop`` up to Python 3.12 and the
``audioop-lts`` package (same import name) from 3.13, so no Python loop touches a sample.
"""

from __future__ import annotations

import sys
import warnings

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 (PEP 594); audioop-lts takes over with the same API in 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_WIDTH = 2
_BIG_ENDIAN = sys.byteorder == "big"


def _check(pcm: bytes) -> bytes:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"16-bit PCM must have an even length, got {len(pcm)} bytes")
    # audioop works in native byte order; our PCM is little-endian on every host.
    return audioop.byteswap(pcm, SAMPLE_WIDTH) if _BIG_ENDIAN else pcm


def _native_to_le(pcm: bytes) -> bytes:
    return audioop.byteswap(pcm, SAMPLE_WIDTH) if _BIG_ENDIAN else pcm


# The four conversions run once per frame on the media path: on little-endian hosts (all the
# usual ones) they are one C call after a length check, with no helper in between.
if _BIG_ENDIAN:
    def ulaw_encode(pcm: bytes) -> bytes:
        """µ-law bytes (one per sample) from 16-bit little-endian PCM."""
        return audioop.lin2ulaw(_check(pcm), SAMPLE_WIDTH)

    def ulaw_decode(data: bytes) -> bytes:
        """16-bit little-endian PCM from µ-law bytes."""
        return audioop.byteswap(audioop.ulaw2lin(data, SAMPLE_WIDTH), SAMPLE_WIDTH)

    def alaw_encode(pcm: bytes) -> bytes:
        """A-law bytes (one per sample) from 16-bit little-endian PCM."""
        return audioop.lin2alaw(_check(pcm), SAMPLE_WIDTH)

    def alaw_decode(data: bytes) -> bytes:
        """16-bit little-endian PCM from A-law bytes."""
        return audioop.byteswap(audioop.alaw2lin(data, SAMPLE_WIDTH), SAMPLE_WIDTH)
else:
    def ulaw_encode(pcm: bytes) -> bytes:
        """µ-law bytes (one per sample) from 16-bit little-endian PCM."""
        if len(pcm) & 1:
            raise ValueError(f"16-bit PCM must have an even length, got {len(pcm)} bytes")
        return audioop.lin2ulaw(pcm, SAMPLE_WIDTH)

    def ulaw_decode(data: bytes) -> bytes:
        """16-bit little-endian PCM from µ-law bytes."""
        return audioop.ulaw2lin(data, SAMPLE_WIDTH)

    def alaw_encode(pcm: bytes) -> bytes:
        """A-law bytes (one per sample) from 16-bit little-endian PCM."""
        if len(pcm) & 1:
            raise ValueError(f"16-bit PCM must have an even length, got {len(pcm)} bytes")
        return audioop.lin2alaw(pcm, SAMPLE_WIDTH)

    def alaw_decode(data: bytes) -> bytes:
        """16-bit little-endian PCM from A-law bytes."""
        return audioop.alaw2lin(data, SAMPLE_WIDTH)


def scale(pcm: bytes, factor: float) -> bytes:
    """16-bit little-endian PCM multiplied by ``factor``, clipped (for concealment fades)."""
    return _native_to_le(audioop.mul(_check(pcm), SAMPLE_WIDTH, factor))


def mix(a: bytes, b: bytes) -> bytes:
    """The clipped sum of two equally long 16-bit little-endian PCM fragments."""
    if len(a) != len(b):
        raise ValueError("fragments to mix must have the same length")
    return _native_to_le(audioop.add(_check(a), _check(b), SAMPLE_WIDTH))


def rms(pcm: bytes) -> int:
    """Root mean square level of 16-bit little-endian PCM (0 for silence)."""
    return int(audioop.rms(_check(pcm), SAMPLE_WIDTH))
