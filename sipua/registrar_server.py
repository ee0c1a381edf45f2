"""Runs the embedded registrar/proxy core (:mod:`sipua.registrar`) on a :class:`SipTransport`.

The adapter is thin: transaction events go into the core, the core's actions become
``send_response`` / ``send_request`` / ``cancel`` / ``send_stateless`` calls, and one timer
follows the core's next deadline (binding expiry, timer C), through :class:`ice.driver.CoreDriver`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer

from ice.driver import CoreDriver
from sipua.registrar import (
    AuthenticationFailed,
    BindingRegistered,
    BindingRemoved,
    CancelForwarded,
    ForwardRequest,
    Registrar,
    RegistrarAction,
    RegistrarEvent,
    RegistrarSettings,
    SendResponse,
    SendStateless,
    parse_users,
)
from sipua.transaction import ClientTransaction, TransactionEvent, TransactionSettings
from sipua.transport import (
    FlowFailed,
    PublicAddressLearned,
    SipTransport,
    TransportEvent,
    TransportSettings,
)

__all__ = ["RegistrarServer", "load_users", "proxy_transaction_settings"]

log = logging.getLogger(__name__)


def load_users(path: str | Path) -> dict[str, str]:
    """Read a users file (format: :func:`sipua.registrar.parse_users`); errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read users file {path}: {exc.strerror or exc}") from None
    try:
        return parse_users(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def proxy_transaction_settings(base: TransactionSettings) -> TransactionSettings:
    """What a proxy needs of the transaction layer: 100 Trying at once for INVITE (§16.2), no
    own 2xx retransmissions (they are end to end, §16.7), no merged-request 482 (a UAS rule),
    and requests forwarded on the transport the target registered with (no §18.1.1 switch)."""
    return dataclasses.replace(base, trying_delay=0.0, retransmit_2xx=False,
                               detect_merged=False, tcp_threshold=None)


class RegistrarServer:
    """The embedded registrar/proxy listening on ``transport_settings``."""

    def __init__(self, settings: RegistrarSettings, users: Mapping[str, str],
                 transport_settings: TransportSettings, *, reactor: Any = None,
                 rng: random.Random | None = None,
                 on_event: Callable[[RegistrarEvent], None] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.reactor: Any = reactor
        self.rng = rng if rng is not None else random.SystemRandom()
        transport_settings = dataclasses.replace(
            transport_settings,
            transaction=proxy_transaction_settings(transport_settings.transaction))
        self.core = Registrar(settings, users, self.rng)
        self.transport = SipTransport(transport_settings, reactor=reactor, rng=self.rng,
                                      on_event=self._transaction_event)
        self.driver: CoreDriver[RegistrarAction, RegistrarEvent] = CoreDriver(
            self.core, reactor, send=self._act, on_event=self._deliver)
        self._subscribers: list[Callable[[RegistrarEvent], None]] = []
        if on_event is not None:
            self._subscribers.append(on_event)
        self._forwarded: dict[str, ClientTransaction] = {}

    def start(self) -> None:
        """Listen (raises twisted's CannotListenError) and tell the core its addresses."""
        self.transport.start()
        self.core.set_local_addresses(self.addresses())

    def addresses(self) -> dict[str, tuple[str, int]]:
        """(host, port) per transport we listen on."""
        return {t: self.transport.local_address(t) for t in self.transport.settings.transports}

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and the timer."""
        self.driver.stop()
        return self.transport.stop()

    def subscribe(self, callback: Callable[[RegistrarEvent], None]) -> None:
        """Call ``callback`` with every registrar event."""
        self._subscribers.append(callback)

    def _transaction_event(self, event: TransactionEvent | TransportEvent) -> None:
        if isinstance(event, PublicAddressLearned | FlowFailed):
            return
        self.core.handle(event, self.driver.now())
        self.driver.poke()

    def _act(self, action: RegistrarAction) -> None:
        """Carry out one action of the core."""
        sip = self.transport
        if isinstance(action, SendResponse):
            try:
                sip.send_response(action.server_tx_id, action.response)
            except ValueError as exc:  # the transaction ended meanwhile
                log.info("response %d not sent: %s", action.response.status, exc)
        elif isinstance(action, ForwardRequest):
            tx = sip.send_request(action.request, action.dest, action.transport,
                                  allow_tcp=False)
            self._forwarded[action.branch] = tx
            if len(self._forwarded) > 4096:
                for branch in [b for b, t in self._forwarded.items()
                               if sip.layer.transaction(t.id) is None]:
                    del self._forwarded[branch]
        elif isinstance(action, CancelForwarded):
            forwarded = self._forwarded.get(action.branch)
            if forwarded is not None and sip.layer.transaction(forwarded.id) is not None:
                sip.cancel(forwarded)
        elif isinstance(action, SendStateless):
            sip.send_stateless(action.message, action.dest, action.transport)

    def _deliver(self, event: RegistrarEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("registrar event handler failed for %r", event)


# --- the `sipua registrar` command -----------------------------------------------------------

def _event_line(event: RegistrarEvent) -> str | None:
    """One line per registration change; proxying and auth failures too."""
    if isinstance(event, BindingRegistered):
        return (f"registered {event.user}: {event.contact} for {event.expires} s from "
                f"{event.transport} {event.source[0]}:{event.source[1]}")
    if isinstance(event, BindingRemoved):
        return f"removed {event.user}: {event.contact} ({event.reason})"
    if isinstance(event, AuthenticationFailed):
        return f"authentication failed for {event.user} from {event.source[0]}:{event.source[1]}"
    return None


def run_registrar_command(*, listen: tuple[str, int], users_file: str, domain: str | None,
                          transports: tuple[str, ...], tls_cert: str | None,
                          tls_key: str | None, tls_port: int | None, min_expires: int,
                          auth_invites: bool, emit: Callable[[str], None],
                          as_json: bool) -> tuple[int, str | None]:
    """Run ``sipua registrar`` on the global reactor until SIGINT/SIGTERM; (exit code, error).

    Exit codes: 0 after an interrupt; 2 for bad arguments or a bad users file; 1 when a port
    cannot be listened on.
    """
    import json
    import sys

    from twisted.internet import reactor as global_reactor
    from twisted.internet.error import CannotListenError

    reactor: Any = global_reactor
    try:
        users = load_users(users_file)
    except ValueError as exc:
        return 2, str(exc)
    if (tls_cert is None) != (tls_key is None):
        return 2, "--tls-cert and --tls-key go together"
    chosen = tuple(dict.fromkeys(transports)) or (
        ("udp", "tcp", "tls") if tls_cert else ("udp", "tcp"))
    if "tls" in chosen and tls_cert is None:
        return 2, "serving TLS needs --tls-cert and --tls-key"
    if tls_port is None:
        tls_port = 0 if listen[1] == 0 else 5061
    try:
        settings = TransportSettings(host=listen[0], port=listen[1], transports=chosen,
                                     tls_port=tls_port, tls_cert_file=tls_cert,
                                     tls_key_file=tls_key)
    except ValueError as exc:
        return 2, str(exc)

    def show(event: RegistrarEvent) -> None:
        if as_json:
            emit(json.dumps(event.to_dict()))
        else:
            line = _event_line(event)
            if line is not None:
                emit(line)
        sys.stdout.flush()

    server = RegistrarServer(RegistrarSettings(domain=domain, min_expires=min_expires,
                                               authenticate_invites=auth_invites),
                             users, settings, reactor=reactor, on_event=show)
    try:
        server.start()
    except (CannotListenError, OSError, ValueError) as exc:
        reason = getattr(exc, "socketError", None) or exc
        return 1, f"cannot listen on {listen[0]}:{listen[1]}: {reason}"
    where = ", ".join(f"{t} {h}:{p}" for t, (h, p) in server.addresses().items())
    if as_json:
        emit(json.dumps({"event": "Listening", "addresses": {
            t: f"{h}:{p}" for t, (h, p) in server.addresses().items()}}))
    else:
        emit(f"registrar listening on {where} (Ctrl-C to stop)")
    sys.stdout.flush()
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    reactor.run()
    return 0, None
