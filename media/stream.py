"""Media streams: an RTP session, a source and a sink bound to the network and to the clock.

A :class:`MediaStream` is the Twisted side of one :class:`~media.session.RtpSession`. On each
tick of the shared :class:`~media.clock.PacingClock` it reads a frame from its source, has the
session packetize it and sends the datagram; it pulls one frame out of the jitter buffer into
its sink; and it runs the session's RTCP and DTMF deadlines (so a stream costs no timer of its
own). Datagrams from the network go to the session; the session's events go to the owner.

Two kinds of path:

- :class:`IceMediaStream` rides an ICE component: it sends with ``IceUdpTransport.send`` over
  the component's selected pair, only once a pair is selected and while consent holds
  (RFC 7675), follows a switch of the selected pair, and accepts media only from the selected
  pair's remote address. RTCP goes on component 2, or on component 1 with rtcp-mux (RFC 5761).
  STUN, TURN and media share the socket the ICE checks opened, so while the stream is silent
  (hold) the agent's keepalives (RFC 8445 §11) keep the NAT binding open.
- :class:`UdpMediaStream` is for peers without ICE: its own UDP port(s), sending to the address
  of the SDP, with optional symmetric RTP (RFC 4961): the destination switches to the source of
  the first valid RTP packet, and only that source is accepted afterwards. On Linux the
  sockets of all such streams are read through one shared epoll set: one reactor wake-up for
  every datagram waiting (``_SocketPoller``); the send side writes the socket directly.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from ice.candidate import AppData, Candidate
from ice.checklist import CandidatePair
from ice.driver import ReactorTime
from ice.events import ConsentLost, IceEvent, PairSelected
from ice.udp import ListeningPort, ReactorUDP
from media.clock import PacingClock
from media.rtcp import RtcpError, parse_rtcp
from media.rtp import RtpError, is_rtcp, parse_rtp
from media.session import (
    Address,
    FirstPacketReceived,
    RtpSession,
    RtpSessionStats,
    SessionEvent,
    SessionState,
)
from media.sinks import AudioSink
from media.sources import AudioSource, Silence
from media.stats import Snapshot

logger = logging.getLogger(__name__)

#: Events of one kind driven by the peer's packets (SsrcChanged, RtcpReceived, ...) a stream
#: passes on per second at most: a peer that changes SSRC on every packet or floods RTCP must
#: not grow the call's timeline. The rest are counted (:attr:`MediaStream.events_suppressed`).
MAX_EVENTS_PER_SECOND = 10

__all__ = [
    "DestinationChanged",
    "IceMediaStream",
    "MediaStream",
    "MediaStreamStats",
    "SendingStarted",
    "SendingStopped",
    "StreamClosed",
    "StreamEvent",
    "StreamState",
    "UdpMediaStream",
]


class StreamState(Enum):
    """Whether the stream has somewhere to send."""

    WAITING = "waiting"
    """No path yet: no selected pair, or no remote address."""
    ACTIVE = "active"
    """A path exists: frames are sent (unless on hold)."""
    STOPPED = "stopped"
    """The peer stopped consenting (RFC 7675 §5.1): nothing is sent until a new pair."""
    CLOSED = "closed"


# --- Events (in addition to the session's) -----------------------------------------------------


@dataclass(frozen=True)
class SendingStarted:
    """The stream got a path and sends from now on (a pair was selected, a remote was set)."""

    at: float
    destination: Address


@dataclass(frozen=True)
class DestinationChanged:
    """RTP now goes to ``new``: a new selected pair, or symmetric RTP latched on the source."""

    at: float
    old: Address
    new: Address
    cause: str


@dataclass(frozen=True)
class SendingStopped:
    """The stream lost its path and stopped sending (``reason``: "consent lost", ...)."""

    at: float
    reason: str


@dataclass(frozen=True)
class StreamClosed:
    """:meth:`MediaStream.close` ran: BYE sent, clock released, sink closed."""

    at: float
    reason: str | None


StreamEvent = SendingStarted | DestinationChanged | SendingStopped | StreamClosed | SessionEvent


@dataclass(frozen=True)
class MediaStreamStats(Snapshot):
    """The session's figures and the path's."""

    state: str
    held: bool
    destination: Address | None
    """Where RTP goes now."""
    rtcp_destination: Address | None
    frames_not_sent: int
    """Frames due while there was no path (waiting, consent lost), not sent."""
    packets_without_path: int
    """Datagrams received before there was a path to accept them from, dropped."""
    packets_from_other_candidates: int
    """Datagrams from another of the peer's candidates than the selected pair's (RFC 8445
    §12.2), accepted as the selected path's."""
    rtcp_not_sent: int
    """RTCP packets due while the RTCP path was missing, dropped."""
    send_errors: int
    session: RtpSessionStats


EventHandler = Callable[[StreamEvent], None]


class MediaStream:
    """The common part: ticks, sink, RTCP timers, hold, DTMF, events, stats, close.

    Subclasses provide the path (:meth:`_send_rtp`, :meth:`_send_rtcp`, :meth:`_release`).
    """

    def __init__(self, session: RtpSession, clock: PacingClock, reactor: ReactorTime, *,
                 source: AudioSource | None = None, sink: AudioSink | None = None,
                 on_event: EventHandler | None = None) -> None:
        if session.state is SessionState.CLOSED:
            raise ValueError("the RTP session is closed")
        self.session = session
        self.clock = clock
        self.reactor = reactor
        self.source: AudioSource = source if source is not None else Silence()
        self.sink = sink
        self.on_event: EventHandler = on_event or (lambda event: None)
        self._state = StreamState.WAITING
        self._held = False
        self._sending = False
        """ACTIVE, not held: the hot path tests this one flag."""
        self._playing = False
        """The first packet arrived: frames go to the sink from now on."""
        self._polls = False
        """Subclasses that look at their path on every tick set this."""
        self._samples = session.frame_samples
        self._pull_pcm = session.jitter_buffer.get_pcm
        """What the sink plays each tick, bound once (session.read_pcm without the hop)."""
        self._dest: Address | None = None
        self._rtcp_dest: Address | None = None
        self._frames_not_sent = 0
        self._no_path = 0
        self._other_candidates = 0
        self._rtcp_not_sent = 0
        self.send_errors = 0
        #: Datagrams whose handling raised unexpectedly (a bug: logged with a traceback, dropped).
        self.receive_errors = 0
        self._first_packet_waiters: list[Deferred[FirstPacketReceived]] = []
        self._first_packet: FirstPacketReceived | None = None
        self._registered = False
        #: Session events not passed on: more than MAX_EVENTS_PER_SECOND of a kind.
        self.events_suppressed = 0
        self._event_window = -1
        self._event_counts: dict[type, int] = {}

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Join the pacing clock at the session's ptime (idempotent)."""
        if self._state is StreamState.CLOSED:
            raise ValueError("the stream is closed")
        if not self._registered:
            ptime = self.session.frame_samples / self.session.codec.sample_rate
            self.clock.register(self, ptime)
            self._registered = True

    @property
    def state(self) -> StreamState:
        """Whether the stream has a path."""
        return self._state

    def _set_state(self, new: StreamState, cause: str) -> None:
        if new is self._state:
            return
        logger.info("media stream %08x: %s -> %s (%s)", self.session.ssrc, self._state.name,
                    new.name, cause)
        self._state = new
        self._sending = new is StreamState.ACTIVE and not self._held

    @property
    def held(self) -> bool:
        """On hold: no audio is sent (RTCP and reception go on)."""
        return self._held

    @property
    def destination(self) -> Address | None:
        """Where RTP goes now (None while waiting)."""
        return self._dest

    def hold(self) -> None:
        """Stop sending audio; reception and RTCP go on, and on an ICE path the agent's
        keepalives take over on the idle pair (RFC 8445 §11)."""
        if self._state is StreamState.CLOSED:
            raise ValueError("the stream is closed")
        self._held = True
        self._sending = False

    def resume(self) -> None:
        """Send audio again. The session restarts its send grid after a pause longer than its
        ``resync_after``: the timestamp skips the silent time and the marker bit is set."""
        if self._state is StreamState.CLOSED:
            raise ValueError("the stream is closed")
        self._held = False
        self._sending = self._state is StreamState.ACTIVE

    def send_dtmf(self, digits: str, duration: float | None = None) -> None:
        """Queue DTMF digits (RFC 4733): they replace the audio of the next frames."""
        if self._state is StreamState.CLOSED:
            raise ValueError("the stream is closed")
        if self._held:
            raise ValueError("cannot send DTMF while on hold")
        self.session.send_dtmf(digits, duration)

    def when_first_packet(self) -> Deferred[FirstPacketReceived]:
        """Fires with the session's :class:`FirstPacketReceived` (at once if it came already)."""
        if self._first_packet is not None:
            return defer.succeed(self._first_packet)
        d: Deferred[FirstPacketReceived] = Deferred()
        self._first_packet_waiters.append(d)
        return d

    def close(self, reason: str | None = None) -> Deferred[None]:
        """Leave: RTCP BYE (RFC 3550 §6.6) on the RTCP path, release the clock and the sink,
        then the path's sockets. Idempotent."""
        if self._state is StreamState.CLOSED:
            return defer.succeed(None)
        now = self.reactor.seconds()
        self.clock.unregister(self)
        self._registered = False
        self.session.close(now, reason)
        self._flush_rtcp()
        self._set_state(StreamState.CLOSED, reason or "close")
        if self.sink is not None:
            self.sink.close()
        self._drain(now)
        self.on_event(StreamClosed(now, reason))
        return self._release()

    # --- the tick ------------------------------------------------------------------------

    def on_tick(self, grid_time: float, now: float) -> None:
        """One frame period: send a frame, play a frame, run RTCP and DTMF deadlines."""
        if self._polls:
            self._poll(now)
        session = self.session
        if self._sending:
            # The grid time is the sampling instant: the session's send grid stays the clock's.
            self._send_rtp(session.send_frame(self.source.read(self._samples), grid_time))
        elif self._state is StreamState.CLOSED:
            return
        elif not self._held:
            self._frames_not_sent += 1
        if self._playing and self.sink is not None:
            self.sink.write(self._pull_pcm(now))
        deadline = session.next_timer()
        if deadline is not None and now >= deadline:
            session.handle_timer(now)
            self._flush_rtcp()
            self._drain(now)

    # --- input ---------------------------------------------------------------------------

    def _rtp_in(self, data: bytes, source: Address, now: float, mux: bool) -> None:
        session = self.session
        if mux:
            session.receive(data, source, now)
        else:
            session.receive_rtp(data, source, now)
        self._drain(now)

    def _rtcp_in(self, data: bytes, source: Address, now: float) -> None:
        self.session.receive_rtcp(data, source, now)
        self._drain(now)

    def _drain(self, now: float) -> None:
        session = self.session
        while (event := session.next_event()) is not None:
            if isinstance(event, FirstPacketReceived):
                self._playing = True
                self._first_packet = event
                waiters, self._first_packet_waiters = self._first_packet_waiters, []
                for d in waiters:
                    d.callback(event)
            else:
                window = int(now)
                if window != self._event_window:
                    self._event_window = window
                    self._event_counts.clear()
                kind = type(event)
                seen = self._event_counts.get(kind, 0)
                if seen >= MAX_EVENTS_PER_SECOND:
                    self.events_suppressed += 1
                    continue
                self._event_counts[kind] = seen + 1
            self._emit(event)

    def _emit(self, event: StreamEvent) -> None:
        try:
            self.on_event(event)
        except Exception:  # the owner's handler must not break the media path
            logger.exception("media stream event handler failed for %r", event)

    def _flush_rtcp(self) -> None:
        for data in self.session.pop_transmits():
            self._send_rtcp(data)

    # --- path (subclasses) -------------------------------------------------------------------

    def _poll(self, now: float) -> None:
        """Look at the path before a tick (ICE: selected pair, consent)."""

    def _send_rtp(self, data: bytes) -> None:
        raise NotImplementedError

    def _send_rtcp(self, data: bytes) -> None:
        raise NotImplementedError

    def _release(self) -> Deferred[None]:
        return defer.succeed(None)

    def _path_changed(self, rtp: Address | None, rtcp: Address | None, now: float,
                      cause: str) -> None:
        """Record a new destination and tell the owner."""
        old = self._dest
        self._dest = rtp
        self._rtcp_dest = rtcp
        if rtp is None:
            return
        if old is None:
            self._emit(SendingStarted(now, rtp))
        elif old != rtp:
            self._emit(DestinationChanged(now, old, rtp, cause))

    # --- statistics ---------------------------------------------------------------------------

    def stats(self) -> MediaStreamStats:
        """The session's figures and the path's."""
        return MediaStreamStats(
            state=self._state.value, held=self._held, destination=self._dest,
            rtcp_destination=self._rtcp_dest, frames_not_sent=self._frames_not_sent,
            packets_without_path=self._no_path,
            packets_from_other_candidates=self._other_candidates,
            rtcp_not_sent=self._rtcp_not_sent,
            send_errors=self.send_errors, session=self.session.stats(),
        )


# --- ICE ---------------------------------------------------------------------------------------


class IceAgentView(Protocol):
    """What a stream reads of the ICE agent."""

    def selected_pair(self, component: int) -> CandidatePair | None: ...
    def can_send(self, component: int) -> bool: ...
    @property
    def remote_candidates(self) -> list[Candidate]: ...


class IceTransport(Protocol):
    """What a stream needs of :class:`ice.udp.IceUdpTransport`."""

    @property
    def agent(self) -> IceAgentView: ...
    @property
    def reactor(self) -> Any: ...
    def send(self, component: int, data: bytes) -> None: ...


class IceMediaStream(MediaStream):
    """A stream over the selected pair of an ICE component.

    The owner of the :class:`~ice.udp.IceUdpTransport` routes to the stream what the transport
    delivers: ``AppData`` to :meth:`app_data_received` and ICE events to
    :meth:`ice_event_received` (the stream also looks at the agent on every tick, so a missed
    event only delays a change by one frame).
    """

    def __init__(self, session: RtpSession, ice: IceTransport, clock: PacingClock, *,
                 component: int = 1, rtcp_mux: bool = True, source: AudioSource | None = None,
                 sink: AudioSink | None = None, on_event: EventHandler | None = None) -> None:
        super().__init__(session, clock, ice.reactor, source=source, sink=sink,
                         on_event=on_event)
        if component < 1:
            raise ValueError("ICE components start at 1")
        self.ice = ice
        self.component = component
        self.rtcp_mux = rtcp_mux
        # RFC 5761 §5.1.3 / RFC 8445: without mux, RTCP is the next component.
        self.rtcp_component = component if rtcp_mux else component + 1
        self._polls = True
        self._rtcp_remote: Address | None = None

    def app_data_received(self, app: AppData) -> bool:
        """Feed one datagram the ICE transport delivered; False when it is not this stream's.

        Accepted only once the component has a selected pair; the session then drops (and
        counts) whatever does not come from the pair's remote address.
        """
        if self._state is StreamState.CLOSED:
            return app.component in (self.component, self.rtcp_component)
        now = self.reactor.seconds()
        if app.component == self.component:
            if self._dest is None:
                self._poll(now)
                if self._dest is None:
                    self._no_path += 1
                    return True
            self._rtp_in(app.data, self._source_of(app, self._dest), now, self.rtcp_mux)
            return True
        if app.component == self.rtcp_component:
            if self._rtcp_remote is None:
                self._poll(now)
                if self._rtcp_remote is None:
                    self._no_path += 1
                    return True
            self._rtcp_in(app.data, self._source_of(app, self._rtcp_remote), now)
            return True
        return False

    def _source_of(self, app: AppData, expected: Address | None) -> Address:
        """The source to hand the session: the selected pair's remote address for data from any
        of the peer's candidates of the component.

        RFC 8445 §12.2: an agent must be ready to receive on any of its candidate pairs, not
        only the selected one. A peer behind a TURN server, for one, may send everything through
        its relay once it holds a permission for our address. Sources that are none of the
        peer's candidates stay as they are, and the session drops and counts them.
        """
        source = app.source
        if expected is None or source == expected:
            return source
        for cand in self.ice.agent.remote_candidates:
            if cand.component == app.component and cand.address == source:
                self._other_candidates += 1
                return expected
        return source

    def ice_event_received(self, event: IceEvent) -> None:
        """Follow a selection, a switch or a lost consent at once."""
        if self._state is StreamState.CLOSED:
            return
        if isinstance(event, PairSelected | ConsentLost) and event.component in (
                self.component, self.rtcp_component):
            self._poll(self.reactor.seconds())

    def _poll(self, now: float) -> None:
        agent = self.ice.agent
        pair = agent.selected_pair(self.component)
        remote = pair.remote.address if pair is not None else None
        if self.rtcp_mux:
            rtcp_remote = remote
        else:
            rtcp_pair = agent.selected_pair(self.rtcp_component)
            rtcp_remote = rtcp_pair.remote.address if rtcp_pair is not None else None
        if remote != self._dest or rtcp_remote != self._rtcp_remote:
            if remote is not None:
                self.session.set_expected_source(remote, rtcp_remote)
            self._rtcp_remote = rtcp_remote
            self._path_changed(remote, rtcp_remote, now, "selected pair")
        if self._state is StreamState.CLOSED:
            return
        if remote is None:
            self._set_state(StreamState.WAITING, "no selected pair")
        elif agent.can_send(self.component):
            self._set_state(StreamState.ACTIVE, "pair selected")
        elif self._state is not StreamState.STOPPED:
            # RFC 7675 §5.1: no consent, no media.
            self._set_state(StreamState.STOPPED, "consent lost")
            self._emit(SendingStopped(now, "consent lost"))

    def _send_rtp(self, data: bytes) -> None:
        self._send_on(self.component, data)

    def _send_rtcp(self, data: bytes) -> None:
        if self._rtcp_remote is None or not self.ice.agent.can_send(self.rtcp_component):
            self._rtcp_not_sent += 1
            return
        self._send_on(self.rtcp_component, data)

    def _send_on(self, component: int, data: bytes) -> None:
        try:
            self.ice.send(component, data)
        except Exception as exc:  # IceError (no pair, consent lost) between two polls
            self.send_errors += 1
            logger.debug("media send on component %d failed: %s", component, exc)


# --- Plain UDP -----------------------------------------------------------------------------------


def _check_address(address: Address) -> Address:
    host, port = address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"need an IP address, not {host!r} (resolve names first)") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return (host, int(port))


Handler = Callable[[bytes, Any], None]


class _SocketPoller:
    """Reads the UDP sockets of every :class:`UdpMediaStream` of a reactor through one epoll set.

    The reactor sees a single reader (the epoll descriptor). When it is readable, one
    :meth:`doRead` takes a datagram from each ready socket and hands it straight to its stream,
    and repeats while sockets are ready: with hundreds of calls, the datagrams of a whole pacing
    tick cost one reactor wake-up instead of one each, and none of Twisted's per-descriptor
    logging context, ``fileno()`` check and trailing ``EAGAIN`` read. Level-triggered, so a
    datagram left over when the rounds end wakes the reactor again.

    When every stream is paced by one clock and that clock is dense (it wakes the process at
    least every 2 ms, i.e. many calls), the poller parks: it leaves the reactor and reads on the
    clock's wake-ups instead, just before the streams tick. Datagrams then wait at most one
    clock step (1 ms) in the kernel, and the process wakes once per step instead of once per
    burst of arrivals: with the far ends' sends spread over the period, that is most of the
    cost of a wake-up saved per datagram. The arrival time a stream records is the read time,
    up to one step late (well inside a 20 ms frame; the interarrival jitter reported grows by
    a fraction of a millisecond). It unparks as soon as the clock is no longer dense.
    """

    ROUNDS = 8
    """Polls per wake-up before the reactor gets its turn (timers must not starve)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._epoll = select.epoll()
        self._handlers: dict[int, tuple[socket.socket, Handler]] = {}
        self._reading = False
        self._clocks: dict[PacingClock, int] = {}
        """Clock -> sockets of its streams; parking needs exactly one."""
        self._clock_for: dict[int, PacingClock] = {}
        self._parked = False

    # IReadDescriptor, for the reactor.
    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "media sockets"

    def connectionLost(self, reason: object) -> None:
        """The reactor dropped us (shutdown): re-register on the next add."""
        self._reading = False
        self._parked = False

    def doRead(self) -> None:
        self._read_ready()
        if len(self._clocks) == 1 and next(iter(self._clocks)).dense:
            self._reactor.removeReader(self)
            self._reading = False
            self._parked = True

    def _clock_woke(self, now: float) -> None:
        """The clock's wake-up: read what arrived; go back to the reactor when not dense."""
        if not self._parked:
            return
        self._read_ready()
        if not (len(self._clocks) == 1 and next(iter(self._clocks)).dense):
            self._unpark()

    def _unpark(self) -> None:
        self._parked = False
        if self._handlers and not self._reading:
            self._reactor.addReader(self)
            self._reading = True

    def _read_ready(self) -> None:
        handlers = self._handlers
        poll = self._epoll.poll
        for _ in range(self.ROUNDS):
            ready = poll(0)
            if not ready:
                return
            for fd, _mask in ready:
                entry = handlers.get(fd)
                if entry is None:
                    continue
                sock, handler = entry
                try:
                    data, addr = sock.recvfrom(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:  # an ICMP error reported on the socket
                    logger.debug("media socket %d: %s", fd, exc)
                    continue
                try:
                    handler(data, addr)
                except Exception:  # one stream's failure must not stop the others
                    logger.exception("media datagram handler failed")

    # Sockets.
    def add(self, sock: socket.socket, handler: Handler, clock: PacingClock) -> int:
        """Read ``sock`` (of a stream paced by ``clock``) from now on; returns its descriptor
        (for :meth:`remove`)."""
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = (sock, handler)
        self._clock_for[fd] = clock
        if clock not in self._clocks:
            clock.add_wake_hook(self._clock_woke)
        self._clocks[clock] = self._clocks.get(clock, 0) + 1
        if len(self._clocks) > 1 and self._parked:
            self._unpark()
        if not self._reading and not self._parked:
            self._reactor.addReader(self)
            self._reading = True
        return fd

    def remove(self, fd: int) -> None:
        """Stop reading descriptor ``fd`` (before its socket is closed)."""
        if self._handlers.pop(fd, None) is None:
            return
        clock = self._clock_for.pop(fd)
        left = self._clocks[clock] - 1
        if left:
            self._clocks[clock] = left
        else:
            del self._clocks[clock]
            clock.remove_wake_hook(self._clock_woke)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        if not self._handlers:
            self._parked = False
            if self._reading:
                self._reactor.removeReader(self)
                self._reading = False
        elif self._parked and not (len(self._clocks) == 1
                                   and next(iter(self._clocks)).dense):
            self._unpark()


_POLLERS: weakref.WeakKeyDictionary[Any, _SocketPoller] = weakref.WeakKeyDictionary()
"""One poller per reactor."""


def _shared_reader(reactor: Any, port: Any) -> tuple[_SocketPoller, socket.socket] | None:
    """The poller for ``port``'s socket when the platform and the reactor allow one (epoll, a
    reactor with ``addReader``, a real Twisted UDP port); None to let Twisted read it."""
    sock = getattr(port, "socket", None)
    if (not hasattr(select, "epoll") or not isinstance(sock, socket.socket)
            or not callable(getattr(port, "stopReading", None))
            or not callable(getattr(reactor, "addReader", None))):
        return None
    try:
        poller = _POLLERS.get(reactor)
        if poller is None:
            poller = _POLLERS[reactor] = _SocketPoller(reactor)
    except TypeError:  # a reactor that cannot be weakly referenced
        return None
    port.stopReading()
    return poller, sock


class _Receiver(DatagramProtocol):
    """One UDP port of a stream."""

    def __init__(self, owner: UdpMediaStream, rtcp: bool) -> None:
        self.owner = owner
        self.rtcp = rtcp

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            self.owner._datagram(datagram, (addr[0], addr[1]), self.rtcp)
        except Exception:  # never into the reactor: log, count, drop the datagram
            self.owner.receive_errors += 1
            logger.exception("media datagram from %s failed", addr)


_SEND_DROPS = (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.ENETUNREACH,
               errno.EHOSTUNREACH)


class UdpMediaStream(MediaStream):
    """A stream on its own UDP port(s), for a peer without ICE.

    ``remote`` is the address of the SDP (``c=`` and ``m=``), None until the answer arrives
    (:meth:`set_remote`). With ``symmetric`` (RFC 4961) the destination latches onto the source
    of the first valid RTP packet — the way through a NAT in front of the peer — and only that
    source is accepted from then on. Without rtcp-mux, RTCP uses a second port (the next one
    when ``local`` names a port) and the peer's ``a=rtcp`` address, by default its RTP port + 1.
    """

    def __init__(self, session: RtpSession, clock: PacingClock, *,
                 local: Address = ("127.0.0.1", 0), remote: Address | None = None,
                 remote_rtcp: Address | None = None, rtcp_mux: bool = True,
                 symmetric: bool = True, reactor: ReactorUDP | None = None,
                 source: AudioSource | None = None, sink: AudioSink | None = None,
                 on_event: EventHandler | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        assert reactor is not None
        super().__init__(session, clock, reactor, source=source, sink=sink, on_event=on_event)
        self.rtcp_mux = rtcp_mux
        self.symmetric = symmetric
        host, port = local
        self._port: ListeningPort = reactor.listenUDP(port, _Receiver(self, False),
                                                      interface=host)
        self._rtcp_port: ListeningPort | None = None
        if not rtcp_mux:
            self._rtcp_port = reactor.listenUDP(port + 1 if port else 0, _Receiver(self, True),
                                                interface=host)
        self._rtp_sendto = self._fast_send(self._port)
        self._rtcp_sendto = self._fast_send(self._rtcp_port or self._port)
        # Read through the shared poller where possible (see _SocketPoller).
        self._polled: list[tuple[_SocketPoller, int]] = []
        for listening, handler in ((self._port, self._rtp_datagram),
                                   (self._rtcp_port, self._rtcp_datagram)):
            if listening is None:
                continue
            shared = _shared_reader(reactor, listening)
            if shared is not None:
                poller, sock = shared
                self._polled.append((poller, poller.add(sock, handler, clock)))
        self._latched = False
        self._rtcp_latched = False
        if remote is not None:
            self.set_remote(remote, remote_rtcp)

    @staticmethod
    def _fast_send(port: ListeningPort) -> Callable[[bytes, Address], object]:
        # Twisted's UDP write re-validates the address on every packet; addresses are checked
        # once in set_remote, so the socket is written directly when there is one.
        sock = getattr(port, "socket", None)
        return sock.sendto if sock is not None else port.write

    @property
    def local_address(self) -> Address:
        """The RTP port's address (for the SDP)."""
        host = self._port.getHost()
        return (str(host.host), int(host.port))

    @property
    def local_rtcp_address(self) -> Address:
        """The RTCP port's address (``a=rtcp``); the RTP one with rtcp-mux."""
        host = (self._rtcp_port or self._port).getHost()
        return (str(host.host), int(host.port))

    @property
    def latched(self) -> bool:
        """Symmetric RTP has switched the destination to the peer's source."""
        return self._latched

    def set_remote(self, remote: Address, remote_rtcp: Address | None = None) -> None:
        """The peer's RTP (and RTCP) address from its SDP; sending starts at the next tick."""
        if self._state is StreamState.CLOSED:
            raise ValueError("the stream is closed")
        rtp = _check_address(remote)
        if remote_rtcp is not None:
            rtcp = _check_address(remote_rtcp)
        else:
            rtcp = rtp if self.rtcp_mux else (rtp[0], rtp[1] + 1)
        now = self.reactor.seconds()
        self._latched = self._rtcp_latched = False
        self.session.set_expected_source(None, None)
        self._path_changed(rtp, rtcp, now, "remote description")
        self._set_state(StreamState.ACTIVE, "remote address")

    def on_tick(self, grid_time: float, now: float) -> None:
        """:meth:`MediaStream.on_tick` with the send written straight to the socket (the
        common case of hundreds of streams; anything unusual takes the general path)."""
        if not self._sending:
            super().on_tick(grid_time, now)
            return
        session = self.session
        try:
            self._rtp_sendto(session.send_frame(self.source.read(self._samples), grid_time),
                             self._dest)  # type: ignore[arg-type]
        except OSError as exc:
            self._send_failed(exc)
        if self._playing and self.sink is not None:
            self.sink.write(self._pull_pcm(now))
        deadline = session.next_timer()
        if deadline is not None and now >= deadline:
            session.handle_timer(now)
            self._flush_rtcp()
            self._drain(now)

    def _rtp_datagram(self, data: bytes, addr: Any) -> None:
        """The RTP port's datagrams from the poller: :meth:`_datagram` for RTP, inlined."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])  # IPv6: drop flow info and scope id
        if self._state is StreamState.CLOSED:
            return
        now = self.reactor.seconds()
        if self._dest is None:
            self._no_path += 1
            return
        if self.symmetric and not self._latched:
            if self.rtcp_mux and is_rtcp(data):
                self._rtcp_in(data, addr, now)
                return
            if self.session.srtp is not None:
                self._latch_secure(data, addr, now)
                return
            self._latch(data, addr, now)
        session = self.session
        if self.rtcp_mux and len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95:
            session.receive_rtcp(data, addr, now)  # RFC 5761 §4 (see is_rtcp)
        else:
            session.receive_rtp(data, addr, now)
        self._drain(now)

    def _rtcp_datagram(self, data: bytes, addr: Any) -> None:
        self._datagram(data, (addr[0], addr[1]), True)

    def _datagram(self, data: bytes, source: Address, rtcp_port: bool) -> None:
        if not rtcp_port:
            self._rtp_datagram(data, source)  # the RTP port has one path, poller or not
            return
        if self._state is StreamState.CLOSED:
            return
        now = self.reactor.seconds()
        if self._dest is None:
            self._no_path += 1
            return
        if self.symmetric and not self._rtcp_latched:
            self._latch_rtcp(data, source, now)
        self._rtcp_in(data, source, now)

    def _latch(self, data: bytes, source: Address, now: float) -> None:
        """RFC 4961: send back to where valid RTP comes from, and accept only that source."""
        try:
            packet = parse_rtp(data)
        except RtpError:
            return
        session = self.session
        # Valid: not our own stream reflected, and our codec or a dynamic type (telephone-event).
        pt = packet.payload_type
        if packet.ssrc == session.ssrc or not (pt == session.codec.payload_type or pt >= 96):
            return
        self._latched = True
        rtcp = source if self.rtcp_mux else self._rtcp_dest
        if self.rtcp_mux:
            self._rtcp_latched = True
        session.set_expected_source(source, rtcp if self._rtcp_latched else None)
        self._path_changed(source, rtcp, now, "symmetric RTP")

    def _latch_secure(self, data: bytes, source: Address, now: float) -> None:
        """Symmetric RTP with SRTP: latch only onto a source whose packet authenticated, so
        that a forged packet cannot divert the stream (the SRTP header alone proves nothing)."""
        if self.session.receive_rtp(data, source, now):
            self._latch(data, source, now)
        self._drain(now)

    def _latch_rtcp(self, data: bytes, source: Address, now: float) -> None:
        try:
            parse_rtcp(data)
        except RtcpError:
            return
        self._rtcp_latched = True
        self._rtcp_dest = source
        self.session.set_expected_source(self._dest if self._latched else None, source)

    def _send_rtp(self, data: bytes) -> None:
        try:
            self._rtp_sendto(data, self._dest)  # type: ignore[arg-type]
        except OSError as exc:
            self._send_failed(exc)

    def _send_rtcp(self, data: bytes) -> None:
        if self._rtcp_dest is None:
            self._rtcp_not_sent += 1
            return
        try:
            self._rtcp_sendto(data, self._rtcp_dest)
        except OSError as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: OSError) -> None:
        self.send_errors += 1
        level = logging.DEBUG if exc.errno in _SEND_DROPS else logging.WARNING
        logger.log(level, "media send to %s failed: %s", self._dest, exc)

    def _release(self) -> Deferred[None]:
        for poller, fd in self._polled:
            poller.remove(fd)
        self._polled = []
        ports = [p for p in (self._port, self._rtcp_port) if p is not None]
        waits = [defer.maybeDeferred(p.stopListening) for p in ports]
        d = defer.gatherResults(waits, consumeErrors=True)
        return d.addCallback(lambda _: None)
