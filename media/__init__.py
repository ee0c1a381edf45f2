"""RTP/RTCP audio (RFC 3550) over the pair ICE selected: codecs, pacing, jitter buffer, stats."""
