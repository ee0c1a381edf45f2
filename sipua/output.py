"""What the ``sipua`` commands print: readable progress and reports, or JSON lines.

Two printers with one interface (``event``, ``say``, ``report``, ``close``), fed by the user
agent's event stream (``ua.subscribe(printer.event)``):

- :class:`JsonPrinter` (``--json``): one JSON object per line, ``{"event": "ClassName", ...}``
  for every event, ``{"event": "Status", "message": ...}`` for what the command says, and a
  final ``{"event": "CallReport", ...}`` per call. Scripts parse it line by line.
- :class:`HumanPrinter` (the default): one line per milestone (registered, candidates
  gathered, checking, pair selected, answered, media flowing, ended), a live spinner with the
  counters while registering, gathering and checking (only on a terminal), and a table per call
  at the end.

:class:`SipLog` writes every SIP message in full (``--log-sip``). The printers hold no sockets
and read no clock: times come from the events and the report.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import IO, Any, Protocol

from rich.console import Console
from rich.status import Status
from rich.table import Table

__all__ = ["HumanPrinter", "JsonPrinter", "Printer", "SipLog", "event_dict", "report_table"]


class _Reportable(Protocol):
    def report(self) -> Any: ...


class Printer(Protocol):
    """What a command prints through."""

    def event(self, event: object) -> None:
        """One event of the user agent (session, registration, ICE, media)."""

    def say(self, text: str, **fields: Any) -> None:
        """A status line of the command; ``fields`` go into the JSON form."""

    def report(self, call: _Reportable) -> None:
        """The report of a finished (or failed) call."""

    def close(self) -> None:
        """Stop any live display."""


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def event_dict(event: object) -> dict[str, Any]:
    """An event as a JSON-ready dict with its class name under ``"event"``."""
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        data = dict(to_dict())
    elif dataclasses.is_dataclass(event) and not isinstance(event, type):
        data = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    else:
        data = {"value": repr(event)}
    data.setdefault("event", type(event).__name__)
    return {k: _plain(v) for k, v in data.items()}


class JsonPrinter:
    """One JSON object per line (module docstring)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit

    def event(self, event: object) -> None:
        """Every event, as it comes."""
        self.emit(json.dumps(event_dict(event), default=str))

    def say(self, text: str, **fields: Any) -> None:
        """A ``Status`` line."""
        self.emit(json.dumps({"event": "Status", "message": text, **fields}, default=str))

    def report(self, call: _Reportable) -> None:
        """The ``CallReport`` line."""
        self.emit(json.dumps({"event": "CallReport", **call.report().to_dict()}, default=str))

    def close(self) -> None:
        """Nothing live to stop."""


def _address(value: Any) -> str:
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(value)


class HumanPrinter:
    """Readable lines, a live spinner on a terminal, a table per call (module docstring).

    ``console`` takes the lines and tables; ``live`` (usually standard error, and only when it
    is a terminal) shows the spinner, which disappears when the next milestone is printed.
    """

    def __init__(self, console: Console, live: Console | None = None) -> None:
        self.console = console
        self.live = live if live is not None and live.is_terminal else None
        self._status: Status | None = None
        self.candidates: Counter[str] = Counter()
        self.checks: Counter[str] = Counter()
        self._checking_said = False

    def reset(self) -> None:
        """Forget the counters of the previous call."""
        self.close()
        self.candidates.clear()
        self.checks.clear()
        self._checking_said = False

    # --- the spinner ----------------------------------------------------------------------
    def progress(self, text: str) -> None:
        """Show (or update) the spinner line."""
        if self.live is None:
            return
        if self._status is None:
            self._status = self.live.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def close(self) -> None:
        """Remove the spinner."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def line(self, text: str, style: str | None = None) -> None:
        """Print one line (above the spinner, which stays)."""
        self.console.print(text, style=style, highlight=False, markup=False)

    # --- the Printer interface ------------------------------------------------------------
    def say(self, text: str, **fields: Any) -> None:
        """Print a status line of the command."""
        self.line(text)

    def event(self, event: object) -> None:
        """Turn milestones into lines and counters into the spinner."""
        kind = type(event).__name__
        get: Callable[[str], Any] = lambda name: getattr(event, name, None)  # noqa: E731
        if kind == "Registered":
            public = get("public_address")
            extra = f", public address {_address(public)}" if public else ""
            self.line(f"registered {get('aor')} as {get('contact')} for {get('expires')} s"
                      f"{extra}", "green")
        elif kind == "RegistrationFailed":
            self.line(f"registration of {get('aor')} failed: {get('status')} {get('reason')}",
                      "red")
        elif kind == "Unregistered":
            self.line(f"unregistered {get('aor')}")
        elif kind == "CandidateGathered":
            candidate = get("candidate")
            self.candidates[str(getattr(getattr(candidate, "type", None), "value", "?"))] += 1
            self.progress(f"gathering candidates: {self._candidate_counts()}")
        elif kind == "GatheringCompleted":
            self.line(f"gathered {sum(self.candidates.values())} candidates "
                      f"({self._candidate_counts()})")
        elif kind in ("CheckSent", "CheckSucceeded", "CheckFailed", "CheckReceived"):
            if kind == "CheckSent" and get("retransmission"):
                self.checks["retransmitted"] += 1
            else:
                self.checks[kind] += 1
            if not self._checking_said:
                self._checking_said = True
                self.line("checking candidate pairs")
            self.progress(f"checking: {self.checks['CheckSent']} sent, "
                          f"{self.checks['CheckSucceeded']} succeeded, "
                          f"{self.checks['CheckFailed']} failed, "
                          f"{self.checks['CheckReceived']} received")
        elif kind == "PairSelected":
            pair = get("pair")
            self.line(f"component {get('component')}: selected "
                      f"{getattr(pair, 'key', pair)}", "green")
        elif kind == "IceCompleted":
            self.line(f"ICE completed after {self.checks['CheckSent']} checks "
                      f"({self.checks['CheckSucceeded']} succeeded, "
                      f"{self.checks['CheckFailed']} failed)", "green")
            self.close()
        elif kind == "IceFailed":
            self.line(f"ICE failed: {get('reason')}", "red")
            self.close()
        elif kind == "IncomingCall":
            self.line(f"incoming call from {get('caller')}", "bold")
        elif kind == "CallProgressed":
            self.line(f"{get('status')} {get('reason')}")
            self.progress(f"{get('reason')}...".lower())
        elif kind == "CallAnswered":
            self.line(f"answered ({get('status')})", "green")
        elif kind == "CallFailed":
            self.line(f"call failed: {get('status')} {get('reason')}", "red")
            self.close()
        elif kind == "FirstPacketReceived":
            self.line("first RTP packet received", "green")
            self.close()
        elif kind == "CallEnded":
            self.line(f"call ended by {get('by')} ({get('reason')})")
            self.close()

    def _candidate_counts(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.candidates.items())) or "none"

    def report(self, call: _Reportable) -> None:
        """The call report as a table."""
        self.close()
        self.console.print(report_table(call.report().to_dict()))


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def report_table(data: Mapping[str, Any]) -> Table:
    """A call report (``CallReport.to_dict()``) as a two-column table."""
    table = Table(title=f"call {data.get('call_id') or '?'}", show_header=False,
                  title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    end = f"ended by {data.get('ended_by')} ({data.get('end_reason')})" \
        if data.get("ended_by") else ""
    table.add_row("outcome", f"{data.get('state')}, status {data.get('status')} {end}".strip())
    if data.get("error"):
        table.add_row("error", str(data["error"]))
    setup = data.get("setup") or {}
    table.add_row("setup", f"answer {_ms(setup.get('invite_to_answer_ms'))}, "
                           f"ICE {_ms(setup.get('invite_to_ice_completed_ms'))}, "
                           f"first RTP {_ms(setup.get('invite_to_first_rtp_ms'))}")
    ice = data.get("ice") or {}
    if ice.get("used"):
        checks = ice.get("checks") or []
        results = Counter(str(c.get("result", "")).split(":")[0] for c in checks)
        table.add_row("ICE", f"{ice.get('role')}, {ice.get('nomination')} nomination, "
                             f"{len(checks)} checks: " + ", ".join(
                                 f"{n} {r}" for r, n in sorted(results.items())))
        for component, pair in sorted((ice.get("selected") or {}).items()):
            if pair is not None:
                table.add_row(f"component {component}", str(pair.get("key")))
    else:
        table.add_row("ICE", "not used")
    media = data.get("media") or {}
    session = media.get("session") or {}
    outbound, inbound = session.get("outbound") or {}, session.get("inbound") or {}
    if outbound or inbound:
        jitter = inbound.get("jitter")
        table.add_row("RTP", f"{data.get('codec')}: sent {outbound.get('packetsSent', 0)}, "
                             f"received {inbound.get('packetsReceived', 0)}, lost "
                             f"{inbound.get('packetsLost', 0)}, jitter "
                             f"{'-' if jitter is None else f'{jitter * 1000:.1f} ms'}")
    if data.get("mos") is not None:
        table.add_row("MOS", f"{data['mos']:.2f}")
    messages = (data.get("sip") or {}).get("messages") or []
    if messages:
        table.add_row("SIP", f"{len(messages)} messages")
    return table


class SipLog:
    """Every SIP message in full, with direction, transport and addresses (``--log-sip``).

    Its :meth:`tap` has the shape of :data:`sipua.transport.SipTap`; ``clock`` gives the time
    printed in each heading (reactor time).
    """

    def __init__(self, stream: IO[str], clock: Callable[[], float]) -> None:
        self.stream = stream
        self.clock = clock
        self.messages = 0

    def tap(self, data: bytes, local: tuple[str, int], remote: tuple[str, int],
            outgoing: bool, transport: str) -> None:
        """Write one message."""
        arrow = f"{_address(local)} -> {_address(remote)}" if outgoing else \
            f"{_address(remote)} -> {_address(local)}"
        word = "sent" if outgoing else "received"
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        at = datetime.fromtimestamp(self.clock()).strftime("%H:%M:%S.%f")
        self.stream.write(f"----- {word} {transport.upper()} {arrow} at {at} -----\n{text}")
        if not text.endswith("\n"):
            self.stream.write("\n")
        self.stream.flush()
        self.messages += 1
