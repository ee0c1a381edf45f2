"""SIP dialogs (RFC 3261 §12): identity, route set, CSeq spaces and the remote target.

A dialog is the peer-to-peer relationship an INVITE (or, later, a SUBSCRIBE) creates. This module
keeps its state and builds the requests sent inside it; it sends nothing itself. Transactions
(sipua/transaction.py) carry the requests; the INVITE session (sipua/session.py) decides what to
send.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sipua.message import CSeq, Headers, NameAddr, Request, Response, Via
from sipua.uri import SipUri

log = logging.getLogger(__name__)

#: Methods whose requests and 2xx responses refresh the remote target (RFC 3261 §12.2,
#: RFC 3311 §5.1 for UPDATE).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


class DialogError(Exception):
    """An in-dialog request that must be refused; ``status`` is the code to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class DialogState(enum.Enum):
    """RFC 3261 §12: early (after a provisional with a tag), confirmed (after a 2xx)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class DialogId:
    """Call-ID plus both tags, from this side's point of view (§12)."""

    call_id: str
    local_tag: str
    remote_tag: str


def uas_dialog_id(request: Request) -> DialogId | None:
    """The id of the dialog an incoming request belongs to (local tag = To tag), if any."""
    to_tag = request.to.tag
    from_tag = request.from_.tag
    if not to_tag or from_tag is None:
        return None
    return DialogId(request.call_id, to_tag, from_tag)


def uac_dialog_id(response: Response) -> DialogId | None:
    """The id of the dialog a response to our request belongs to (local tag = From tag)."""
    from_tag = response.from_.tag
    to_tag = response.to.tag
    if not from_tag or not to_tag:
        return None
    return DialogId(response.call_id, from_tag, to_tag)


class Dialog:
    """One dialog's state; every change goes through the methods below."""

    def __init__(self, *, call_id: str, local_tag: str, remote_tag: str, local_uri: NameAddr,
                 remote_uri: NameAddr, remote_target: SipUri, route_set: Iterable[NameAddr],
                 local_seq: int, remote_seq: int | None, secure: bool,
                 state: DialogState) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        #: From of our requests (without tag; the tag is added when building).
        self.local_uri = local_uri
        #: To of our requests (without tag).
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set: list[NameAddr] = list(route_set)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self.state = state

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 1xx (with To tag) or 2xx to our INVITE creates (RFC 3261 §12.1.2).

        The route set is the response's Record-Route in reverse order; the remote target is
        its Contact.
        """
        remote_tag = response.to.tag
        if not remote_tag:
            raise ValueError("a dialog-creating response needs a To tag")
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        state = DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY
        return cls(
            call_id=request.call_id, local_tag=request.from_.tag or "", remote_tag=remote_tag,
            local_uri=_without_tag(request.from_), remote_uri=_without_tag(request.to),
            remote_target=target, route_set=reversed(response.record_routes),
            local_seq=request.cseq.number, remote_seq=None,
            secure=request.uri.scheme == "sips", state=state)

    @classmethod
    def from_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog our 1xx/2xx (carrying ``local_tag``) creates for an INVITE (§12.1.1).

        The route set is the request's Record-Route in order; the remote target its Contact.
        The dialog is early until :meth:`confirm` (when the 2xx is sent).
        """
        contacts = request.contacts
        if not contacts:
            raise DialogError(400, "the request has no Contact")
        return cls(
            call_id=request.call_id, local_tag=local_tag, remote_tag=request.from_.tag or "",
            local_uri=_without_tag(request.to), remote_uri=_without_tag(request.from_),
            remote_target=contacts[0].uri, route_set=request.record_routes,
            local_seq=0, remote_seq=request.cseq.number,
            secure=request.uri.scheme == "sips", state=DialogState.EARLY)

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def _set_state(self, state: DialogState, cause: str) -> None:
        if state is not self.state:
            log.debug("dialog %s: %s -> %s (%s)", self.call_id, self.state.value, state.value,
                      cause)
            self.state = state

    def confirm(self, cause: str = "2xx") -> None:
        """Early -> confirmed."""
        if self.state is DialogState.EARLY:
            self._set_state(DialogState.CONFIRMED, cause)

    def terminate(self, cause: str) -> None:
        self._set_state(DialogState.TERMINATED, cause)

    # -- requests we send ------------------------------------------------------------------
    def next_hop(self) -> SipUri:
        """Where the next request of this dialog goes first (§12.2.1.1, §8.1.2)."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def new_request(self, method: str, *, via: Via, contact: NameAddr | None = None,
                    body: bytes = b"", content_type: str | None = None,
                    headers: Iterable[tuple[str, str]] = (), cseq: int | None = None,
                    max_forwards: int = 70) -> Request:
        """Build an in-dialog request (RFC 3261 §12.2.1.1).

        The CSeq number increments for every request but ACK, which reuses the INVITE's
        (``cseq``). With a strict router first in the route set (no ``lr``), the Request-URI is
        that router and the remote target goes last in Route.
        """
        if method == "ACK":
            if cseq is None:
                raise ValueError("an ACK needs the CSeq number of its INVITE")
            number = cseq
        else:
            self.local_seq += 1
            number = self.local_seq
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and "lr" not in routes[0].uri.params:
            uri = routes[0].uri.with_()
            uri.headers = {}
            routes = [*routes[1:], NameAddr(self.remote_target)]
        items: list[tuple[str, str]] = [
            ("Via", str(via)),
            ("Max-Forwards", str(max_forwards)),
            ("From", str(self.local_uri.with_tag(self.local_tag))),
            ("To", str(self.remote_uri.with_tag(self.remote_tag))),
            ("Call-ID", self.call_id),
            ("CSeq", str(CSeq(number, method))),
        ]
        items += [("Route", str(route)) for route in routes]
        if contact is not None:
            items.append(("Contact", str(contact)))
        items += list(headers)
        if content_type is not None:
            items.append(("Content-Type", content_type))
        return Request(method, uri, Headers(items), body)

    # -- what we receive -------------------------------------------------------------------
    def receive_request(self, request: Request) -> None:
        """Check an in-dialog request and apply it (§12.2.2); raises :class:`DialogError`.

        ACK and CANCEL carry the CSeq of their INVITE and are not checked against it.
        """
        if self.state is DialogState.TERMINATED and request.method != "ACK":
            raise DialogError(481, "Call/Transaction Does Not Exist")
        number = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and number < self.remote_seq:
                raise DialogError(500, "CSeq out of order")
            self.remote_seq = number
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = request.contacts[0].uri

    def receive_response(self, request: Request, response: Response) -> None:
        """Apply a response to a request we sent in this dialog.

        A 2xx to INVITE confirms an early dialog and (RFC 3261 §12.1.2) fixes the route set
        from its Record-Route; a 2xx to a target refresh updates the remote target.
        """
        if not 200 <= response.status < 300:
            if 100 < response.status < 200 and self.state is DialogState.EARLY and \
                    response.record_routes:
                self.route_set = list(reversed(response.record_routes))
            return
        if request.method == "INVITE" and self.state is DialogState.EARLY:
            self.route_set = list(reversed(response.record_routes))
            self.confirm("2xx to INVITE")
        if request.method in TARGET_REFRESH and response.contacts:
            self.remote_target = response.contacts[0].uri

    def __repr__(self) -> str:
        return (f"<Dialog {self.call_id} {self.local_tag}/{self.remote_tag} "
                f"{self.state.value}>")


def _without_tag(addr: NameAddr) -> NameAddr:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return NameAddr(addr.uri.with_(), addr.display, params)
