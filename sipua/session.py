"""INVITE sessions (RFC 3261 §13-15, RFC 3264 offer/answer, RFC 3311 UPDATE), sans-IO.

A :class:`SessionManager` is the user agent core for calls: it reads the events of a
:class:`~sipua.transaction.TransactionLayer`, routes them to the :class:`InviteSession` they
belong to (by transaction, by dialog), answers what no session owns (OPTIONS, requests for unknown
dialogs, methods it does not implement) and queues session events for the owner. It sends through
the transaction layer it was given; the owner flushes that layer (its driver) after each call.

A session carries SDP bodies but never reads them: the owner (``sipua.call``) builds offers and
answers and decides whether an offer is acceptable. The session tracks the offer/answer state
(RFC 3264 §4, RFC 6337), so that a second offer while one is pending gets 491 (glare) or 500.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sipua.auth import DigestAuthFailed, DigestClient
from sipua.dialog import Dialog, DialogError, DialogId, uas_dialog_id
from sipua.message import (
    CSeq,
    NameAddr,
    Request,
    Response,
    SipParseError,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_name_addr,
    parse_via,
)
from sipua.transaction import (
    AckNotReceived,
    AckReceived,
    Address,
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionLayer,
    TransactionTimedOut,
    TransportFailed,
    default_port,
    replace_top_via,
)
from sipua.uri import SipUri, parse_uri

__all__ = [
    "AnswerReceived", "CallAnswered", "CallConfirmed", "CallEnded", "CallFailed",
    "CallProgressed", "IncomingCall", "InviteSession", "MessageRecord", "OfferReceived",
    "OfferRejected", "OfferState", "SessionError", "SessionEvent", "SessionManager",
    "SessionSettings", "SessionState",
]

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"


class SessionError(Exception):
    """The owner asked for something the session cannot do in its state (the caller's fault)."""


@dataclass(frozen=True)
class SessionSettings:
    """Behaviour of the INVITE sessions of one user agent."""

    #: User-Agent header of requests and Server header of responses (RFC 3261 §20.41, §20.35).
    user_agent: str = "sipua"
    #: Methods listed in Allow (RFC 3261 §20.5); others are answered 405.
    allow: tuple[str, ...] = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE")
    #: Option tags listed in Supported (RFC 3261 §20.37); a Require outside them gets 420.
    supported: tuple[str, ...] = ()
    #: Final response an unanswered incoming call gets when the local side hangs up.
    decline_status: int = 603
    #: Live sessions (either direction) at most; a new incoming INVITE beyond it is answered
    #: 486 Busy Here (RFC 3261 §21.4.24) and opens no session. 0 means unlimited.
    max_sessions: int = 0


class SessionState(enum.Enum):
    """Where one INVITE session is (RFC 3261 §13, §15)."""

    CALLING = "calling"          # UAC: INVITE sent, nothing back yet
    PROCEEDING = "proceeding"    # UAC: a provisional response arrived
    CANCELLING = "cancelling"    # UAC: CANCEL asked for before a final response
    INCOMING = "incoming"        # UAS: INVITE received, not answered
    RINGING = "ringing"          # UAS: a provisional response with our tag was sent
    ACCEPTED = "accepted"        # UAS: 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"      # the session is established
    ENDING = "ending"            # BYE sent (or due), waiting for its response
    ENDED = "ended"


class OfferState(enum.Enum):
    """The offer/answer exchange (RFC 3264 §4, RFC 6337 §2)."""

    STABLE = "stable"                # no offer outstanding
    LOCAL_OFFER = "local-offer"      # we sent an offer and wait for the answer
    REMOTE_OFFER = "remote-offer"    # we received an offer and owe the answer


# --- events -----------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class SessionEvent:
    """Base class: when it happened and which session it is about."""

    at: float
    session_id: str

    def to_dict(self) -> dict[str, Any]:
        """``{"event": ClassName, field: value...}`` with JSON types (bodies as text)."""
        out: dict[str, Any] = {"event": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out


@dataclass(frozen=True)
class IncomingCall(SessionEvent):
    """An INVITE opened a new session; ``sdp`` is its offer (None: offer wanted in our 2xx)."""

    caller: str
    callee: str
    request_uri: str
    sdp: bytes | None


@dataclass(frozen=True)
class CallProgressed(SessionEvent):
    """A provisional response (101-199) arrived for our INVITE."""

    status: int
    reason: str


@dataclass(frozen=True)
class CallAnswered(SessionEvent):
    """UAC: a 2xx arrived (and was ACKed); UAS: our 2xx left."""

    status: int


@dataclass(frozen=True)
class CallConfirmed(SessionEvent):
    """UAS: the ACK of our 2xx arrived (RFC 3261 §13.3.1.4)."""


@dataclass(frozen=True)
class CallFailed(SessionEvent):
    """Our INVITE got a final non-2xx response, timed out (408) or could not be sent (503)."""

    status: int
    reason: str


@dataclass(frozen=True)
class OfferReceived(SessionEvent):
    """The peer made an offer in ``method`` (INVITE, UPDATE, or a 2xx to our offerless
    INVITE); answer with :meth:`InviteSession.answer` or refuse with
    :meth:`InviteSession.reject_offer`."""

    sdp: bytes
    method: str


@dataclass(frozen=True)
class AnswerReceived(SessionEvent):
    """The answer to our offer; ``early`` when it came in a provisional response."""

    sdp: bytes
    method: str
    early: bool = False


@dataclass(frozen=True)
class OfferRejected(SessionEvent):
    """Our re-INVITE or UPDATE offer was refused; the previous session stays (RFC 3261 §14.1).

    ``retry_after`` is the randomized wait of §14.1 for a 491 (glare), else None.
    """

    status: int
    reason: str
    method: str
    retry_after: float | None


@dataclass(frozen=True)
class CallEnded(SessionEvent):
    """The session is over: ``by`` is "local" or "remote"."""

    by: str
    reason: str


@dataclass(frozen=True)
class MessageRecord:
    """One SIP message of a session, for the call report's timeline."""

    at: float
    direction: str
    """"sent" or "received"."""
    start_line: str
    cseq: str
    has_body: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return dataclasses.asdict(self)


# --- helpers ----------------------------------------------------------------------------------

def _is_sdp(message: Request | Response) -> bool:
    return bool(message.body) and (message.mime_type or SDP_TYPE) == SDP_TYPE


def _hop(uri: SipUri, transport: str) -> tuple[Address, str]:
    """Where a request to ``uri`` goes, by the URI alone (numeric hosts; RFC 3263 §4.2)."""
    t = (uri.params.get("transport") or transport).lower()
    if uri.scheme == "sips" and t == "udp":
        t = "tls"
    host = uri.params.get("maddr") or uri.host
    port = uri.port if uri.port is not None else default_port(t)
    return (host, port), t


@dataclass
class _Outgoing:
    """A request we sent in a session and what to do with its responses."""

    purpose: str
    """"invite", "reinvite", "update", "bye", "fork-bye"."""
    request: Request
    dest: Address
    transport: str
    dialog: Dialog | None = None


@dataclass
class _Incoming:
    """An incoming re-INVITE or UPDATE the owner has not answered yet."""

    request: Request
    server_tx_id: str


@dataclass
class _Ack:
    """An ACK we sent for a 2xx, re-sent on that 2xx's retransmissions (RFC 3261 §13.2.2.4)."""

    request: Request
    dest: Address
    transport: str


class InviteSession:
    """One call's signalling: the INVITE, its dialog and the in-dialog requests."""

    def __init__(self, manager: SessionManager, *, session_id: str, role: str, call_id: str,
                 local_tag: str, local_uri: NameAddr, remote_uri: NameAddr, transport: str,
                 now: float, credentials: DigestClient | None = None,
                 outbound_proxy: Address | None = None) -> None:
        self._manager = manager
        self.id = session_id
        #: "uac" (we sent the INVITE) or "uas".
        self.role = role
        self.call_id = call_id
        self.local_tag = local_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.transport = transport.lower()
        self.credentials = credentials
        self.outbound_proxy = outbound_proxy
        self.state = SessionState.CALLING if role == "uac" else SessionState.INCOMING
        self.offer_state = OfferState.STABLE
        self.created_at = now
        #: The confirmed dialog (None before a 2xx).
        self.dialog: Dialog | None = None
        #: Early dialogs by remote tag (UAC: one per fork; UAS: ours).
        self.early: dict[str, Dialog] = {}
        #: The last SDP we sent and the last we received.
        self.local_sdp: bytes | None = None
        self.remote_sdp: bytes | None = None
        #: Every SIP message of the session, in order (the report's timeline).
        self.messages: list[MessageRecord] = []
        #: Final status of the INVITE (ours or theirs), once known.
        self.final_status: int | None = None
        # UAC side
        self.invite: Request | None = None
        self._invite_tx: ClientTransaction | None = None
        self._invite_dest: Address | None = None
        self._early_answer: bytes | None = None
        self._ack_pending_answer = False   # a 2xx carried an offer: the ACK carries the answer
        self._acks: dict[str, _Ack] = {}
        # UAS side
        self._server_tx_id: str | None = None
        self._bye_after_ack = False
        # in-dialog offers
        self._pending_out: _Outgoing | None = None
        self._pending_in: _Incoming | None = None
        self._reinvite_wants_ack_answer = False

    # --- state ------------------------------------------------------------------------------
    def _set_state(self, new: SessionState, cause: str) -> None:
        old = self.state
        if old is new:
            return
        log.info("session %s: %s -> %s (%s)", self.id, old.value, new.value, cause)
        self.state = new
        if new is SessionState.ENDED:
            self._manager._forget(self)

    def _set_offer_state(self, new: OfferState, cause: str) -> None:
        if new is not self.offer_state:
            log.debug("session %s offer/answer: %s -> %s (%s)", self.id, self.offer_state.value,
                      new.value, cause)
            self.offer_state = new

    @property
    def ended(self) -> bool:
        """True once the session is over (or ending: BYE sent)."""
        return self.state in (SessionState.ENDING, SessionState.ENDED)

    @property
    def established(self) -> bool:
        """A 2xx was exchanged and the session is not ending."""
        return self.state in (SessionState.ACCEPTED, SessionState.CONFIRMED)

    @property
    def remote_target(self) -> str | None:
        """The peer's Contact of the confirmed dialog."""
        return str(self.dialog.remote_target) if self.dialog else None

    def _emit(self, event: SessionEvent) -> None:
        self._manager._events.append(event)

    def _record(self, now: float, direction: str, message: Request | Response) -> None:
        try:
            cseq = str(message.cseq)
        except SipParseError:
            cseq = ""
        self.messages.append(MessageRecord(now, direction, message.start_line(), cseq,
                                           bool(message.body)))

    # --- sending ----------------------------------------------------------------------------
    def _via(self, transport: str) -> str:
        host, port = self._manager.via_address(transport)
        shown = f"[{host}]" if ":" in host else host
        return (f"SIP/2.0/{transport.upper()} {shown}:{port};"
                f"branch={new_branch(self._manager.rng)};rport")

    def _contact(self) -> NameAddr:
        host, port = self._manager.contact_address(self.transport)
        user = self.local_uri.uri.user
        uri = SipUri("sip", user=user, host=host, port=port)
        if self.transport != "udp":
            uri.params["transport"] = self.transport
        return NameAddr(uri)

    def _common_headers(self) -> list[tuple[str, str]]:
        return [("User-Agent", self._manager.settings.user_agent)]

    def _dialog_dest(self, dialog: Dialog) -> tuple[Address, str]:
        if self.outbound_proxy is not None:
            return self.outbound_proxy, self.transport
        return _hop(dialog.next_hop(), self.transport)

    def _send(self, outgoing: _Outgoing, now: float) -> None:
        self._record(now, "sent", outgoing.request)
        tx = self._manager.layer.send_request(outgoing.request, outgoing.dest,
                                              outgoing.transport, now)
        self._manager._by_client_tx[tx.id] = (self, outgoing)
        if outgoing.purpose == "invite":
            self._invite_tx = tx

    def _in_dialog(self, method: str, dialog: Dialog, purpose: str, now: float, *,
                   body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> _Outgoing:
        dest, transport = self._dialog_dest(dialog)
        items = self._common_headers() + list(headers)
        if method in ("INVITE", "UPDATE"):
            items.append(("Allow", ", ".join(self._manager.settings.allow)))
        if self.credentials is not None:
            items += self.credentials.authorization(method, str(dialog.remote_target), body)
        request = dialog.new_request(
            method, via=parse_via(self._via(transport)),
            contact=self._contact() if method in ("INVITE", "UPDATE") else None,
            body=body, content_type=SDP_TYPE if body else None, headers=items)
        outgoing = _Outgoing(purpose, request, dest, transport, dialog)
        self._send(outgoing, now)
        return outgoing

    def _send_ack(self, dialog: Dialog, cseq: int, now: float, body: bytes = b"") -> None:
        dest, transport = self._dialog_dest(dialog)
        items = self._common_headers()
        if self.invite is not None and cseq == self.invite.cseq.number:
            # RFC 3261 §22.1: the ACK of a 2xx carries the INVITE's credentials.
            for name in ("Authorization", "Proxy-Authorization"):
                items += [(name, v) for v in self.invite.headers.get_all(name)]
        ack = dialog.new_request("ACK", via=parse_via(self._via(transport)), cseq=cseq,
                                 body=body, content_type=SDP_TYPE if body else None,
                                 headers=items)
        self._acks[dialog.remote_tag] = _Ack(ack, dest, transport)
        self._record(now, "sent", ack)
        self._manager.layer.send_stateless(ack, dest, transport)

    def _respond(self, request: Request, server_tx_id: str, status: int, now: float, *,
                 reason: str | None = None, body: bytes = b"", contact: bool = False,
                 headers: Iterable[tuple[str, str]] = ()) -> Response:
        response = make_response(request, status, reason, to_tag=self.local_tag)
        if contact:
            response.headers.add("Contact", str(self._contact()))
        if request.method == "INVITE" and request.to.tag is None and 100 < status < 300:
            # RFC 3261 §12.1.1: dialog-creating responses copy Record-Route.
            for value in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", value)
        response.headers.add("Server", self._manager.settings.user_agent)
        if 200 <= status < 300 and request.method in ("INVITE", "UPDATE"):
            response.headers.add("Allow", ", ".join(self._manager.settings.allow))
        for name, value in headers:
            response.headers.add(name, value)
        if body:
            response.headers.add("Content-Type", SDP_TYPE)
            response.body = body
        self._record(now, "sent", response)
        self._manager.layer.send_response(server_tx_id, response, now)
        return response

    # --- owner commands: UAS ------------------------------------------------------------------
    def ring(self, now: float, status: int = 180) -> None:
        """Send a provisional response with our tag (180 Ringing): an early dialog."""
        if self.role != "uas" or self.state not in (SessionState.INCOMING,
                                                   SessionState.RINGING):
            raise SessionError(f"cannot ring in state {self.state.value}")
        if not 100 < status < 200:
            raise ValueError("ring takes a provisional status (101-199)")
        assert self.invite is not None and self._server_tx_id is not None
        self._ensure_uas_dialog()
        self._respond(self.invite, self._server_tx_id, status, now, contact=True)
        self._set_state(SessionState.RINGING, f"sent {status}")

    def _ensure_uas_dialog(self) -> Dialog:
        assert self.invite is not None
        dialog = self.early.get(self.invite.from_.tag or "")
        if dialog is None:
            dialog = Dialog.from_uas(self.invite, self.local_tag)
            self.early[dialog.remote_tag] = dialog
            self._manager._by_dialog[dialog.id] = self
        return dialog

    def accept(self, sdp: bytes, now: float) -> None:
        """Answer the call with 200 OK carrying ``sdp`` (the answer, or our offer when the INVITE
        had none: then the answer comes in the ACK)."""
        if self.role != "uas" or self.state not in (SessionState.INCOMING,
                                                   SessionState.RINGING):
            raise SessionError(f"cannot accept in state {self.state.value}")
        if not sdp:
            raise ValueError("a 2xx to INVITE carries SDP here")
        assert self.invite is not None and self._server_tx_id is not None
        dialog = self._ensure_uas_dialog()
        self._respond(self.invite, self._server_tx_id, 200, now, body=sdp, contact=True)
        self.local_sdp = sdp
        self.final_status = 200
        dialog.confirm("2xx sent")
        self.dialog = dialog
        if self.offer_state is OfferState.REMOTE_OFFER:
            self._set_offer_state(OfferState.STABLE, "answer in 2xx")
        else:
            self._set_offer_state(OfferState.LOCAL_OFFER, "offer in 2xx")
        self._set_state(SessionState.ACCEPTED, "sent 200")
        self._emit(CallAnswered(now, self.id, 200))

    def reject(self, status: int, now: float, reason: str | None = None) -> None:
        """Refuse the call with a final status (486 Busy Here, 488, 603 Decline, ...)."""
        if self.role != "uas" or self.state not in (SessionState.INCOMING,
                                                   SessionState.RINGING):
            raise SessionError(f"cannot reject in state {self.state.value}")
        if not 300 <= status <= 699:
            raise ValueError("reject takes a final non-2xx status")
        assert self.invite is not None and self._server_tx_id is not None
        self._respond(self.invite, self._server_tx_id, status, now, reason=reason)
        self.final_status = status
        self._end("local", f"rejected with {status}", now)

    # --- owner commands: offers inside the session ----------------------------------------------
    def answer(self, sdp: bytes, now: float) -> None:
        """Answer the offer of the last :class:`OfferReceived`."""
        if self.offer_state is not OfferState.REMOTE_OFFER:
            raise SessionError("no offer to answer")
        if self._ack_pending_answer:
            # A 2xx to our offerless INVITE carried the offer: the ACK carries the answer.
            self._ack_pending_answer = False
            assert self.dialog is not None and self.invite is not None
            self._send_ack(self.dialog, self.invite.cseq.number, now, sdp)
            self.local_sdp = sdp
            self._set_offer_state(OfferState.STABLE, "answer in ACK")
            if self._bye_after_ack:
                self._bye(now)
            return
        pending = self._pending_in
        if pending is None:
            raise SessionError("no offer to answer")
        self._pending_in = None
        self._respond(pending.request, pending.server_tx_id, 200, now, body=sdp, contact=True)
        self.local_sdp = sdp
        self._set_offer_state(OfferState.STABLE, f"answered {pending.request.method}")

    def reject_offer(self, status: int, now: float) -> None:
        """Refuse the pending offer (488 Not Acceptable Here); the previous session stays."""
        if not 400 <= status <= 699:
            raise ValueError("reject_offer takes a 4xx-6xx status")
        pending = self._pending_in
        if self.offer_state is not OfferState.REMOTE_OFFER:
            raise SessionError("no offer to reject")
        if pending is None:
            if self._ack_pending_answer:
                # RFC 3261 §13.2.2.4: ACK anyway, then end the session.
                self._ack_pending_answer = False
                assert self.dialog is not None and self.invite is not None
                self._send_ack(self.dialog, self.invite.cseq.number, now)
                self._set_offer_state(OfferState.STABLE, "offer in 2xx refused")
                self._bye(now, reason=f"offer refused ({status})")
                return
            raise SessionError("no offer to reject")
        self._pending_in = None
        self._respond(pending.request, pending.server_tx_id, status, now)
        self._set_offer_state(OfferState.STABLE, f"refused with {status}")

    def reinvite(self, sdp: bytes, now: float) -> None:
        """Send a new offer in a re-INVITE (hold, resume, ICE restart, updated candidates)."""
        self._offer("INVITE", sdp, now)

    def update(self, sdp: bytes, now: float) -> None:
        """Send a new offer in an UPDATE (RFC 3311)."""
        self._offer("UPDATE", sdp, now)

    def can_offer(self) -> bool:
        """No offer is outstanding in either direction and the session is established."""
        return (self.dialog is not None and self.state is SessionState.CONFIRMED
                and self.offer_state is OfferState.STABLE and self._pending_out is None
                and self._pending_in is None)

    def _offer(self, method: str, sdp: bytes, now: float) -> None:
        if self.dialog is None or self.state is not SessionState.CONFIRMED:
            raise SessionError(f"cannot send {method} in state {self.state.value}")
        if not self.can_offer():
            raise SessionError(f"an offer is outstanding ({self.offer_state.value})")
        purpose = "reinvite" if method == "INVITE" else "update"
        self._pending_out = self._in_dialog(method, self.dialog, purpose, now, body=sdp)
        self.local_sdp = sdp
        self._set_offer_state(OfferState.LOCAL_OFFER, f"sent {method}")

    # --- owner commands: ending -----------------------------------------------------------------
    def cancel(self, now: float) -> None:
        """CANCEL our INVITE before a final response (RFC 3261 §9.1)."""
        if self.role != "uac" or self.state not in (SessionState.CALLING,
                                                   SessionState.PROCEEDING):
            raise SessionError(f"cannot cancel in state {self.state.value}")
        assert self._invite_tx is not None
        self._set_state(SessionState.CANCELLING, "cancel asked")
        cancel_tx = self._manager.layer.cancel(self._invite_tx, now)
        if cancel_tx is not None:
            self._record(now, "sent", cancel_tx.request)

    def hangup(self, now: float) -> None:
        """End the call whatever its state: CANCEL, decline, or BYE."""
        state = self.state
        if state in (SessionState.CALLING, SessionState.PROCEEDING):
            self.cancel(now)
        elif state in (SessionState.INCOMING, SessionState.RINGING):
            self.reject(self._manager.settings.decline_status, now)
        elif state is SessionState.ACCEPTED or self._ack_pending_answer:
            # RFC 3261 §15: the callee waits for the ACK before BYE.
            self._bye_after_ack = True
            self._set_state(SessionState.ENDING, "hangup before ACK")
            self._emit(CallEnded(now, self.id, "local", "hangup"))
        elif state is SessionState.CONFIRMED:
            self._bye(now)

    def _bye(self, now: float, reason: str = "hangup") -> None:
        if self.dialog is None:
            self._end("local", reason, now)
            return
        self._fail_pending_in(now)
        announced = self.state is SessionState.ENDING
        self._in_dialog("BYE", self.dialog, "bye", now)
        self._set_state(SessionState.ENDING, "sent BYE")
        if not announced:
            self._emit(CallEnded(now, self.id, "local", reason))

    def _end(self, by: str, reason: str, now: float, *, announce: bool = True) -> None:
        announced = self.state is SessionState.ENDING
        self._set_state(SessionState.ENDED, reason)
        if announce and not announced:
            self._emit(CallEnded(now, self.id, by, reason))

    def _fail_pending_in(self, now: float) -> None:
        pending = self._pending_in
        if pending is not None:
            self._pending_in = None
            self._respond(pending.request, pending.server_tx_id, 487, now)
            self._set_offer_state(OfferState.STABLE, "session ending")

    # --- UAC: responses ---------------------------------------------------------------------------
    def _on_response(self, outgoing: _Outgoing, response: Response, now: float) -> None:
        self._record(now, "received", response)
        status = response.status
        if (status in (401, 407) and self.credentials is not None
                and outgoing.purpose in ("invite", "reinvite", "update", "bye")
                and self._retry_with_credentials(outgoing, response, now)):
            return
        if outgoing.purpose == "invite":
            self._on_invite_response(outgoing, response, now)
        elif outgoing.purpose in ("reinvite", "update"):
            self._on_offer_response(outgoing, response, now)
        elif outgoing.purpose == "bye" and status >= 200 and self.state is SessionState.ENDING:
            self._end("local", f"BYE answered {status}", now, announce=False)

    def _retry_with_credentials(self, outgoing: _Outgoing, response: Response,
                                now: float) -> bool:
        """RFC 3261 §22.2: re-send with credentials, CSeq incremented, a new branch."""
        assert self.credentials is not None
        old = outgoing.request
        try:
            lines = self.credentials.handle_challenge(response, old.method, str(old.uri),
                                                      old.body)
        except DigestAuthFailed as exc:
            log.info("session %s: %s", self.id, exc)
            return False
        request = old.copy()
        request.headers.remove("Authorization")
        request.headers.remove("Proxy-Authorization")
        for name, value in lines:
            request.headers.add(name, value)
        if outgoing.dialog is not None:
            outgoing.dialog.local_seq += 1
            number = outgoing.dialog.local_seq
        else:
            number = old.cseq.number + 1
        request.cseq = CSeq(number, old.method)
        replace_top_via(request, request.vias[0].with_(
            params={**request.vias[0].params, "branch": new_branch(self._manager.rng)}))
        retry = _Outgoing(outgoing.purpose, request, outgoing.dest, outgoing.transport,
                          outgoing.dialog)
        if outgoing.purpose == "invite":
            self.invite = request
        elif outgoing.purpose in ("reinvite", "update"):
            self._pending_out = retry
        log.info("session %s: %s challenged (%d), sending credentials", self.id, old.method,
                 response.status)
        self._send(retry, now)
        return True

    def _on_invite_response(self, outgoing: _Outgoing, response: Response, now: float) -> None:
        status = response.status
        invite = outgoing.request
        if status < 200:
            if self.state is SessionState.CALLING:
                self._set_state(SessionState.PROCEEDING, f"received {status}")
            tag = response.to.tag
            if tag and status > 100 and self.dialog is None:
                dialog = self.early.get(tag)
                if dialog is None:
                    dialog = Dialog.from_uac(invite, response)
                    self.early[tag] = dialog
                    self._manager._by_dialog[dialog.id] = self
                else:
                    dialog.receive_response(invite, response)
            if status > 100:
                self._emit(CallProgressed(now, self.id, status, response.reason))
                if _is_sdp(response) and self.offer_state is OfferState.LOCAL_OFFER and \
                        self._early_answer is None:
                    self._early_answer = response.body
                    self.remote_sdp = response.body
                    self._emit(AnswerReceived(now, self.id, response.body, "INVITE", True))
            return
        if status < 300:
            self._on_invite_2xx(invite, response, now)
            return
        self.final_status = status
        for dialog in self.early.values():
            self._manager._by_dialog.pop(dialog.id, None)
        self.early.clear()
        if self.dialog is not None:
            return  # a late non-2xx from another fork: the session stands
        if self.state is SessionState.CANCELLING:
            self._end("local", f"cancelled ({status})", now)
            return
        self._set_state(SessionState.ENDED, f"received {status}")
        self._emit(CallFailed(now, self.id, status, response.reason))

    def _on_invite_2xx(self, invite: Request, response: Response, now: float) -> None:
        tag = response.to.tag or ""
        if self.dialog is not None:
            ack = self._acks.get(tag)
            if tag == self.dialog.remote_tag or ack is not None:
                if ack is not None:  # §13.2.2.4: a retransmitted 2xx gets the same ACK
                    self._manager.layer.send_stateless(ack.request, ack.dest, ack.transport)
                return
            # Forking (§13.2.2.4): a second branch answered: ACK it, then BYE it.
            fork = Dialog.from_uac(invite, response)
            log.info("session %s: 2xx from a second fork (tag %s): ACK and BYE", self.id, tag)
            self._send_ack(fork, invite.cseq.number, now)
            self._in_dialog("BYE", fork, "fork-bye", now)
            return
        dialog = self.early.pop(tag, None)
        if dialog is None:
            dialog = Dialog.from_uac(invite, response)
        else:
            self._manager._by_dialog.pop(dialog.id, None)
            dialog.receive_response(invite, response)
        for other in self.early.values():
            self._manager._by_dialog.pop(other.id, None)
        self.early.clear()
        self.dialog = dialog
        self._manager._by_dialog[dialog.id] = self
        self.final_status = response.status
        cancelled = self.state is SessionState.CANCELLING
        self._set_state(SessionState.CONFIRMED, f"received {response.status}")
        self._emit(CallAnswered(now, self.id, response.status))
        if self.offer_state is OfferState.LOCAL_OFFER:
            self._set_offer_state(OfferState.STABLE, "answer in 2xx")
            self._send_ack(dialog, invite.cseq.number, now)
            body = response.body if _is_sdp(response) else self._early_answer
            if body is None:
                log.warning("session %s: 2xx without the answer to our offer", self.id)
            elif body != self._early_answer:
                self.remote_sdp = body
                self._emit(AnswerReceived(now, self.id, body, "INVITE"))
            if cancelled:
                self._bye(now, "cancelled (answered first)")
            return
        if not _is_sdp(response):
            self._send_ack(dialog, invite.cseq.number, now)
            self._bye(now, "2xx without an offer")
            return
        self.remote_sdp = response.body
        self._ack_pending_answer = True
        self._bye_after_ack = cancelled
        self._set_offer_state(OfferState.REMOTE_OFFER, "offer in 2xx")
        self._emit(OfferReceived(now, self.id, response.body, "INVITE"))

    def _on_offer_response(self, outgoing: _Outgoing, response: Response, now: float) -> None:
        status = response.status
        if status < 200 or outgoing is not self._pending_out:
            return
        self._pending_out = None
        method = outgoing.request.method
        assert outgoing.dialog is not None
        outgoing.dialog.receive_response(outgoing.request, response)
        if status < 300:
            if method == "INVITE":
                self._send_ack(outgoing.dialog, outgoing.request.cseq.number, now)
            self._set_offer_state(OfferState.STABLE, f"{method} answered")
            if _is_sdp(response):
                self.remote_sdp = response.body
                self._emit(AnswerReceived(now, self.id, response.body, method))
            else:
                log.warning("session %s: 2xx to %s without an answer", self.id, method)
            return
        self._set_offer_state(OfferState.STABLE, f"{method} refused with {status}")
        if status in (408, 481):
            # RFC 3261 §12.2.1.2, §14.1: the dialog is gone.
            if status == 408 and not self.ended:
                self._bye(now, f"{method} timed out")
            else:
                self._end("remote", f"{method} answered {status}", now)
            return
        retry = None
        if status == 491:
            # RFC 3261 §14.1: the owner of the Call-ID waits 2.1-4 s, the other 0-2 s.
            rng = self._manager.rng
            retry = rng.uniform(2.1, 4.0) if self.role == "uac" else rng.uniform(0.0, 2.0)
        self._emit(OfferRejected(now, self.id, status, response.reason, method, retry))

    def _on_client_failure(self, outgoing: _Outgoing, status: int, reason: str,
                           now: float) -> None:
        """Timer B/F or a transport error: act as on 408/503 (RFC 3261 §8.1.3.1, §17.1.4)."""
        if outgoing.purpose == "invite":
            if self.dialog is not None or self.state is SessionState.ENDED:
                return
            self.final_status = status
            if self.state is SessionState.CANCELLING:
                self._end("local", f"cancelled ({reason})", now)
                return
            self._set_state(SessionState.ENDED, reason)
            self._emit(CallFailed(now, self.id, status, reason))
        elif outgoing.purpose in ("reinvite", "update"):
            self._on_offer_response(outgoing, _synthetic(outgoing.request, status, reason),
                                    now)
        elif outgoing.purpose == "bye" and self.state is SessionState.ENDING:
            self._end("local", f"BYE {reason}", now, announce=False)

    # --- UAS: requests in the session -------------------------------------------------------------
    def _on_request(self, request: Request, server_tx_id: str, now: float) -> None:
        self._record(now, "received", request)
        method = request.method
        dialog = self.dialog or self.early.get(request.from_.tag or "")
        if dialog is None:
            self._respond(request, server_tx_id, 481, now)
            return
        try:
            dialog.receive_request(request)
        except DialogError as exc:
            self._respond(request, server_tx_id, exc.status, now, reason=str(exc))
            return
        if method == "BYE":
            self._respond(request, server_tx_id, 200, now)
            self._fail_pending_in(now)
            if self.role == "uas" and self.state in (SessionState.INCOMING,
                                                     SessionState.RINGING):
                assert self.invite is not None and self._server_tx_id is not None
                self._respond(self.invite, self._server_tx_id, 487, now)
            self._end("remote", "BYE", now)
        elif method in ("INVITE", "UPDATE"):
            self._on_offer_request(request, server_tx_id, now)
        elif method == "OPTIONS":
            self._respond(request, server_tx_id, 200, now,
                          headers=self._manager.capabilities())
        else:
            self._respond(request, server_tx_id, 405, now,
                          headers=[("Allow", ", ".join(self._manager.settings.allow))])

    def _on_offer_request(self, request: Request, server_tx_id: str, now: float) -> None:
        method = request.method
        if method == "INVITE" and self.state is not SessionState.CONFIRMED:
            # RFC 3261 §14.2: a re-INVITE before the first is done.
            self._respond(request, server_tx_id, 500, now,
                          headers=[("Retry-After", str(self._manager.rng.randint(0, 10)))])
            return
        if request.body and not _is_sdp(request):
            self._respond(request, server_tx_id, 415, now, headers=[("Accept", SDP_TYPE)])
            return
        if not request.body:
            if method == "UPDATE":
                self._respond(request, server_tx_id, 200, now, contact=True)
                return
            if self.offer_state is not OfferState.STABLE or self.local_sdp is None:
                self._respond(request, server_tx_id, 491, now)
                return
            # An offerless re-INVITE: our current description is the offer (RFC 3264 §8).
            self._respond(request, server_tx_id, 200, now, body=self.local_sdp, contact=True)
            self._reinvite_wants_ack_answer = True
            self._set_offer_state(OfferState.LOCAL_OFFER, "offer in 2xx to re-INVITE")
            return
        if self.offer_state is OfferState.LOCAL_OFFER or self._pending_out is not None:
            self._respond(request, server_tx_id, 491, now)  # RFC 3261 §14.2, RFC 3311 §5.2
            return
        if self.offer_state is OfferState.REMOTE_OFFER or self._pending_in is not None:
            self._respond(request, server_tx_id, 500, now,
                          headers=[("Retry-After", str(self._manager.rng.randint(0, 10)))])
            return
        self._pending_in = _Incoming(request, server_tx_id)
        self.remote_sdp = request.body
        self._set_offer_state(OfferState.REMOTE_OFFER, f"{method} with an offer")
        self._emit(OfferReceived(now, self.id, request.body, method))

    def _on_ack(self, ack: Request, now: float) -> None:
        self._record(now, "received", ack)
        if self.dialog is not None:
            try:
                self.dialog.receive_request(ack)
            except DialogError:
                return
        answer = ack.body if _is_sdp(ack) else None
        if self.state is SessionState.ACCEPTED or (self.state is SessionState.ENDING
                                                   and self._bye_after_ack):
            if self.state is SessionState.ACCEPTED:
                self._set_state(SessionState.CONFIRMED, "ACK received")
                self._emit(CallConfirmed(now, self.id))
            if self.offer_state is OfferState.LOCAL_OFFER:
                self._take_ack_answer(answer, now)
            if self._bye_after_ack:
                self._bye_after_ack = False
                self._bye(now)
            return
        if self._reinvite_wants_ack_answer:
            self._reinvite_wants_ack_answer = False
            self._take_ack_answer(answer, now)

    def _take_ack_answer(self, answer: bytes | None, now: float) -> None:
        self._set_offer_state(OfferState.STABLE, "ACK")
        if answer is None:
            log.warning("session %s: ACK without the answer to our offer", self.id)
            if not self.ended:
                self._bye(now, "ACK without an answer")
            return
        self.remote_sdp = answer
        self._emit(AnswerReceived(now, self.id, answer, "ACK"))

    def _on_cancel(self, now: float) -> None:
        """The INVITE we have not answered was cancelled (RFC 3261 §9.2)."""
        if self.role == "uas" and self.state in (SessionState.INCOMING, SessionState.RINGING):
            assert self.invite is not None and self._server_tx_id is not None
            self._respond(self.invite, self._server_tx_id, 487, now)
            self.final_status = 487
            self._end("remote", "CANCEL", now)
        elif self._pending_in is not None:
            self._fail_pending_in(now)

    def _on_ack_timeout(self, now: float) -> None:
        """RFC 3261 §13.3.1.4: no ACK for our 2xx: end the session with BYE."""
        if self.state in (SessionState.ACCEPTED, SessionState.CONFIRMED) or self._bye_after_ack:
            self._bye_after_ack = False
            self._set_state(SessionState.CONFIRMED, "ACK never came")
            self._bye(now, "no ACK")

    def __repr__(self) -> str:
        return f"<InviteSession {self.id} {self.role} {self.state.value}>"


#: Transaction-to-session maps are pruned of ended transactions past this size.
_PRUNE_AT = 4096


def _synthetic(request: Request, status: int, reason: str) -> Response:
    """A local stand-in for a response that never came (timeouts, transport errors)."""
    return make_response(request, status, reason)


class SessionManager:
    """Every INVITE session of one user agent, over one transaction layer (module docstring)."""

    def __init__(self, layer: TransactionLayer, rng: random.Random,
                 settings: SessionSettings | None = None) -> None:
        self.layer = layer
        self.rng = rng
        self.settings = settings if settings is not None else SessionSettings()
        self.sessions: dict[str, InviteSession] = {}
        self._via: dict[str, Address] = {}
        self._contact: dict[str, Address] = {}
        self._by_dialog: dict[DialogId, InviteSession] = {}
        self._by_client_tx: dict[str, tuple[InviteSession, _Outgoing]] = {}
        self._by_server_tx: dict[str, InviteSession] = {}
        self._events: deque[SessionEvent] = deque()
        self._serial = 0
        #: Incoming INVITEs refused 486 because ``max_sessions`` were live.
        self.refused_busy = 0
        self._prune_at = _PRUNE_AT

    # --- configuration --------------------------------------------------------------------------
    def set_local_address(self, transport: str, address: Address, *,
                          contact: Address | None = None) -> None:
        """Our sent-by for Via (and Contact unless ``contact`` differs, e.g. behind NAT)."""
        t = transport.lower()
        self._via[t] = address
        self._contact[t] = contact or address

    def set_contact_address(self, transport: str, address: Address) -> None:
        """The address peers reach us at (a NAT's public mapping learned from rport)."""
        self._contact[transport.lower()] = address

    def via_address(self, transport: str) -> Address:
        """The sent-by of our requests on ``transport``."""
        t = transport.lower()
        if t not in self._via:
            if not self._via:
                raise SessionError("no local address: call set_local_address() first")
            return next(iter(self._via.values()))
        return self._via[t]

    def contact_address(self, transport: str) -> Address:
        """The host and port of our Contact on ``transport``."""
        t = transport.lower()
        return self._contact.get(t) or self.via_address(t)

    def capabilities(self) -> list[tuple[str, str]]:
        """Allow/Accept/Supported of an OPTIONS answer (RFC 3261 §11.2)."""
        items = [("Allow", ", ".join(self.settings.allow)), ("Accept", SDP_TYPE)]
        if self.settings.supported:
            items.append(("Supported", ", ".join(self.settings.supported)))
        return items

    # --- outputs --------------------------------------------------------------------------------
    def next_event(self) -> SessionEvent | None:
        """The oldest undelivered session event, or None."""
        return self._events.popleft() if self._events else None

    def session(self, session_id: str) -> InviteSession | None:
        """A live session by id (None once it has ended)."""
        return self.sessions.get(session_id)

    def _new_id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial}"

    def _forget(self, session: InviteSession) -> None:
        self.sessions.pop(session.id, None)
        for key in [k for k, s in self._by_dialog.items() if s is session]:
            del self._by_dialog[key]
        # Client transactions stay mapped: a late BYE response or 2xx still finds the session,
        # until the transaction layer has forgotten them too (so the maps stay bounded).
        if len(self._by_client_tx) + len(self._by_server_tx) > self._prune_at:
            live = self.layer.transaction
            self._by_client_tx = {k: v for k, v in self._by_client_tx.items()
                                  if live(k) is not None}
            self._by_server_tx = {k: v for k, v in self._by_server_tx.items()
                                  if live(k) is not None or not v.ended}
            self._prune_at = max(_PRUNE_AT, 2 * (len(self._by_client_tx)
                                                 + len(self._by_server_tx)))

    # --- starting calls -------------------------------------------------------------------------
    def invite(self, target: SipUri | str, *, local: NameAddr | str, now: float,
               dest: Address | None = None, offer: bytes | None = None,
               transport: str = "udp", remote: NameAddr | str | None = None,
               headers: Sequence[tuple[str, str]] = (), routes: Sequence[str] = (),
               credentials: DigestClient | None = None,
               outbound_proxy: Address | None = None) -> InviteSession:
        """Start an outgoing call to ``target`` with an ``offer`` (None: ask for one in the 2xx).

        ``dest`` is where the INVITE goes (an outbound proxy, or the resolved target); by default
        the host and port of ``target`` (a numeric host). ``local`` is our From (AOR).
        """
        uri = parse_uri(target) if isinstance(target, str) else target
        local_addr = parse_name_addr(local) if isinstance(local, str) else local
        remote_addr = (parse_name_addr(remote) if isinstance(remote, str)
                       else remote if remote is not None else NameAddr(uri.with_()))
        if dest is None:
            dest, transport = _hop(uri, transport)
        call_id = new_call_id(self.rng)
        tag = new_tag(self.rng)
        session = InviteSession(
            self, session_id=self._new_id("out-"), role="uac", call_id=call_id, local_tag=tag,
            local_uri=NameAddr(local_addr.uri.with_(), local_addr.display),
            remote_uri=remote_addr, transport=transport, now=now, credentials=credentials,
            outbound_proxy=outbound_proxy)
        items: list[tuple[str, str]] = [
            ("Via", session._via(transport)),
            ("Max-Forwards", "70"),
            ("From", str(session.local_uri.with_tag(tag))),
            ("To", str(remote_addr)),
            ("Call-ID", call_id),
            ("CSeq", "1 INVITE"),
        ]
        items += [("Route", route) for route in routes]
        items.append(("Contact", str(session._contact())))
        items.append(("Allow", ", ".join(self.settings.allow)))
        if self.settings.supported:
            items.append(("Supported", ", ".join(self.settings.supported)))
        items += session._common_headers()
        items += list(headers)
        if offer:
            items.append(("Content-Type", SDP_TYPE))
        request = Request("INVITE", uri, items, offer or b"")
        session.invite = request
        session._invite_dest = dest
        if offer:
            session.local_sdp = offer
            session.offer_state = OfferState.LOCAL_OFFER
        self.sessions[session.id] = session
        log.info("session %s: calling %s via %s:%d/%s", session.id, uri, dest[0], dest[1],
                 transport)
        session._send(_Outgoing("invite", request, dest, transport), now)
        return session

    # --- input: transaction events --------------------------------------------------------------
    def receive(self, event: TransactionEvent, now: float) -> bool:
        """Handle one transaction-layer event; False when it is not a session's business
        (a response to a REGISTER, say), so that the owner can route it elsewhere."""
        try:
            return self._receive(event, now)
        except SipParseError as exc:
            log.info("dropped a message with a bad header: %s", exc)
            return True

    def _receive(self, event: TransactionEvent, now: float) -> bool:
        if isinstance(event, ResponseReceived):
            entry = self._by_client_tx.get(event.client_tx_id)
            if entry is None:
                return False
            session, outgoing = entry
            if event.response.status >= 200 and outgoing.purpose != "invite":
                self._by_client_tx.pop(event.client_tx_id, None)
            session._on_response(outgoing, event.response, now)
            return True
        if isinstance(event, TransactionTimedOut | TransportFailed):
            entry = self._by_client_tx.pop(event.client_tx_id, None)
            if entry is None:
                return False
            session, outgoing = entry
            if isinstance(event, TransactionTimedOut):
                session._on_client_failure(outgoing, 408, "Request Timeout", now)
            else:
                session._on_client_failure(outgoing, 503, f"transport: {event.reason}", now)
            return True
        if isinstance(event, RequestReceived):
            return self._on_request(event, now)
        if isinstance(event, CancelReceived):
            return self._on_cancel(event, now)
        if isinstance(event, AckReceived):
            found = self._find_dialog(event.request)
            if found is None:
                log.debug("ACK for no session dropped")
                return False
            found._on_ack(event.request, now)
            return True
        if isinstance(event, AckNotReceived):
            found = self._by_server_tx.get(event.server_tx_id)
            if found is None:
                return False
            if event.response.status < 300:
                found._on_ack_timeout(now)
            return True
        return False

    def _find_dialog(self, request: Request) -> InviteSession | None:
        dialog_id = uas_dialog_id(request)
        return self._by_dialog.get(dialog_id) if dialog_id is not None else None

    def _stateless(self, event: RequestReceived | CancelReceived, status: int, now: float,
                   headers: Iterable[tuple[str, str]] = ()) -> None:
        response = make_response(event.request, status, to_tag=new_tag(self.rng))
        response.headers.add("Server", self.settings.user_agent)
        for name, value in headers:
            response.headers.add(name, value)
        self.layer.send_response(event.server_tx_id, response, now)

    def _on_request(self, event: RequestReceived, now: float) -> bool:
        request = event.request
        method = request.method
        # RFC 3261 §8.2.2.3: a Require we do not support gets 420 listing it, for every
        # request but ACK and CANCEL (those come as other events), in a dialog or not.
        required = [tag.strip() for value in request.headers.get_all("Require")
                    for tag in value.split(",") if tag.strip()]
        unsupported = [tag for tag in required if tag not in self.settings.supported]
        if unsupported:
            self._stateless(event, 420, now, [("Unsupported", ", ".join(unsupported))])
            return True
        if request.to.tag is not None:
            session = self._find_dialog(request)
            if session is None:
                if method == "OPTIONS":
                    self._stateless(event, 200, now, self.capabilities())
                else:
                    log.info("%s for an unknown dialog (Call-ID %s): 481", method,
                             request.call_id)
                    self._stateless(event, 481, now)
                return True
            if method in ("INVITE", "UPDATE"):
                self._by_server_tx[event.server_tx_id] = session
            session._on_request(request, event.server_tx_id, now)
            return True
        if method == "INVITE":
            self._new_incoming(event, now)
        elif method == "OPTIONS":
            self._stateless(event, 200, now, self.capabilities())
        elif method in ("BYE", "UPDATE"):
            self._stateless(event, 481, now)
        else:
            self._stateless(event, 405, now, [("Allow", ", ".join(self.settings.allow))])
        return True

    def _new_incoming(self, event: RequestReceived, now: float) -> None:
        request = event.request
        if request.body and not _is_sdp(request):
            self._stateless(event, 415, now, [("Accept", SDP_TYPE)])
            return
        if not request.contacts:
            self._stateless(event, 400, now)
            return
        limit = self.settings.max_sessions
        if limit and len(self.sessions) >= limit:
            self.refused_busy += 1
            log.info("incoming call (Call-ID %s) refused: %d sessions live", request.call_id,
                     len(self.sessions))
            self._stateless(event, 486, now)
            return
        transport = event.transport
        session = InviteSession(
            self, session_id=self._new_id("in-"), role="uas", call_id=request.call_id,
            local_tag=new_tag(self.rng), local_uri=request.to, remote_uri=request.from_,
            transport=transport, now=now)
        session.invite = request
        session._server_tx_id = event.server_tx_id
        session._record(now, "received", request)
        if request.body:
            session.remote_sdp = request.body
            session.offer_state = OfferState.REMOTE_OFFER
        self.sessions[session.id] = session
        self._by_server_tx[event.server_tx_id] = session
        log.info("session %s: incoming call from %s (Call-ID %s)", session.id,
                 request.from_.uri, request.call_id)
        self._events.append(IncomingCall(now, session.id, str(request.from_.uri),
                                         str(request.to.uri), str(request.uri),
                                         request.body or None))

    def _on_cancel(self, event: CancelReceived, now: float) -> bool:
        if event.invite_tx_id is None:
            self._stateless(event, 481, now)
            return True
        session = self._by_server_tx.get(event.invite_tx_id)
        response = make_response(event.request, 200,
                                 to_tag=session.local_tag if session else new_tag(self.rng))
        self.layer.send_response(event.server_tx_id, response, now)
        if session is not None:
            session._record(now, "received", event.request)
            session._on_cancel(now)
        return True

