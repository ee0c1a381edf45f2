"""``sipua demo``: the main job on an embedded default, with no outside servers.

Starts the embedded registrar/proxy and the embedded STUN server on loopback, two user agents
(alice and bob) that register with digest authentication, and places one call from alice to bob
by address-of-record. ICE runs on the SDP of the INVITE and the 200 OK (host candidates, and
server-reflexive ones from the STUN server), each side plays a tone of its own frequency over
the selected pair, and the demo checks that each side heard the other's tone. It prints the
report (SIP timeline, ICE checks and selected pairs, audio statistics) and exits 0 on success.
"""

from __future__ import annotations

import random
from typing import Any

from rich.console import Console
from rich.table import Table
from twisted.internet import task

from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from sipua.call import Call, CallError, MediaTimeout
from sipua.exitcodes import ExitCode
from sipua.registrar import RegistrarSettings
from sipua.registrar_server import RegistrarServer
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.transport import TransportSettings
from sipua.useragent import UserAgent

DOMAIN = "demo.test"
ALICE_TONE = 440.0
BOB_TONE = 660.0
#: How far a measured tone may be from the one sent (G.711 and the estimator allow a few Hz).
TONE_TOLERANCE = 10.0
#: Seconds of audio each way after media starts flowing.
TALK = 1.5


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def _settings(user: str, password: str, registrar: str, stun: str, nomination: str,
              rtcp_mux: bool) -> Settings:
    return Settings(
        ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
        accounts=(Account(name=user, uri=f"sip:{user}@{DOMAIN}", password=password,
                          registrar=registrar),),
        ice=IceConfig(stun_servers=(stun,), nomination=nomination, rtcp_mux=rtcp_mux,
                      interfaces=("127.0.0.1",)),
    )


def _heard(sink: MemorySink) -> float:
    pcm = sink.pcm
    # The last second: after the jitter buffer settled, well inside the tone.
    return float(dominant_frequency(pcm[-16000:], 8000)) if len(pcm) >= 3200 else 0.0


async def run_demo(reactor: Any, *, nomination: str = "regular", rtcp_mux: bool = False,
                   seed: int | None = None) -> dict[str, Any]:
    """Run the demo and return its report; ``report["ok"]`` tells success."""
    from ice.server_udp import listen_stun

    rng: random.Random = random.Random(seed) if seed is not None else random.SystemRandom()
    passwords = {user: "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(12))
                 for user in ("alice", "bob")}
    stun_port: Any = listen_stun(reactor, 0, "127.0.0.1")
    stun = f"127.0.0.1:{stun_port.getHost().port}"
    registrar = RegistrarServer(
        RegistrarSettings(domain=DOMAIN), passwords,
        TransportSettings(host="127.0.0.1", port=0, transports=("udp",)),
        reactor=reactor, rng=random.Random(rng.getrandbits(64)))
    registrar.start()
    registrar_address = f"127.0.0.1:{registrar.addresses()['udp'][1]}"
    report: dict[str, Any] = {"ok": False, "registrar": registrar_address, "stun_server": stun,
                              "nomination": nomination,
                              "components": 1 if rtcp_mux else 2, "domain": DOMAIN}
    agents = {user: UserAgent(_settings(user, passwords[user], registrar_address, stun,
                                        nomination, rtcp_mux), reactor,
                              rng=random.Random(rng.getrandbits(64)))
              for user in ("alice", "bob")}
    alice, bob = agents["alice"], agents["bob"]
    call: Call | None = None
    try:
        for user, ua in agents.items():
            await ua.start()
            registered = await ua.register()
            report.setdefault("registrations", {})[user] = {
                "aor": ua.aor, "expires": getattr(registered, "expires", None),
                "contact": str(getattr(registered, "contact", ""))}
        heard_by_bob, heard_by_alice = MemorySink(), MemorySink()
        bob.auto_answer(source=Tone(BOB_TONE), sink=heard_by_bob)
        call = await alice.call(f"sip:bob@{DOMAIN}", source=Tone(ALICE_TONE),
                                sink=heard_by_alice)
        try:
            await call.answered()
            await call.media_flowing(timeout=10.0)
        except CallError as exc:
            report["error"] = f"call failed: {exc}"
            report["exit_code"] = int(ExitCode.CALL_REJECTED)
            return report
        except MediaTimeout as exc:
            report["error"] = f"media did not flow: {exc}"
            report["exit_code"] = int(ExitCode.MEDIA_FAILED)
            return report
        await _sleep(reactor, TALK)
        alice_heard, bob_heard = _heard(heard_by_alice), _heard(heard_by_bob)
        report["audio"] = {
            "alice_sent_hz": ALICE_TONE, "bob_heard_hz": round(bob_heard, 1),
            "bob_sent_hz": BOB_TONE, "alice_heard_hz": round(alice_heard, 1),
        }
        await call.hangup()
        ok = abs(alice_heard - BOB_TONE) <= TONE_TOLERANCE and \
            abs(bob_heard - ALICE_TONE) <= TONE_TOLERANCE
        report["ok"] = ok
        if not ok:
            report["error"] = "the tones did not arrive as sent"
        report["exit_code"] = int(ExitCode.OK if ok else ExitCode.MEDIA_FAILED)
        return report
    except Exception as exc:  # registration refused, no answer...: say what, not a traceback
        code = getattr(exc, "code", None)
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["exit_code"] = int(code) if isinstance(code, int) else int(ExitCode.FAILURE)
        return report
    finally:
        if call is not None:
            report["call"] = call.report().to_dict()
        for ua in agents.values():
            await ua.stop()
        await registrar.stop()
        stopped = stun_port.stopListening()
        if stopped is not None:
            await stopped


def describe_check(entry: dict[str, Any]) -> str:
    """One readable line for a connectivity check of the report."""
    flags = [f for f, on in (("USE-CANDIDATE", entry.get("use_candidate")),
                             ("triggered", entry.get("triggered"))) if on]
    extra = f" [{', '.join(flags)}]" if flags else ""
    rtt = f", rtt {entry['rtt_ms']:.1f} ms" if entry.get("rtt_ms") is not None else ""
    sends = entry.get("transmissions", 1)
    resend = f", sent {sends}x" if sends > 1 else ""
    return f"{entry['pair']}{extra}: {entry['result']}{rtt}{resend}"


def print_report(report: dict[str, Any], console: Console) -> None:
    """The human-readable report."""
    console.print(f"[bold]sipua demo[/]: alice calls bob through the embedded registrar "
                  f"{report['registrar']} and STUN server {report['stun_server']} "
                  f"({report['nomination']} nomination, {report['components']} component(s))")
    for user, reg in report.get("registrations", {}).items():
        console.print(f"  {user} registered {reg['aor']} as {reg['contact']} "
                      f"for {reg['expires']} s")
    call = report.get("call")
    if call:
        sip = Table(title="SIP messages (alice)", show_lines=False)
        sip.add_column("t (ms)", justify="right")
        sip.add_column("")
        sip.add_column("message")
        for msg in call["sip"]["messages"]:
            arrow = "->" if msg["direction"] == "sent" else "<-"
            body = " (SDP)" if msg["has_body"] else ""
            sip.add_row(f"{msg['at'] * 1000:.1f}", arrow, f"{msg['start_line']}{body}")
        console.print(sip)
        checks = Table(title="ICE checks (alice)", show_lines=False)
        checks.add_column("t (ms)", justify="right")
        checks.add_column("check")
        for entry in call["ice"]["checks"]:
            checks.add_row(f"{entry['sent_at'] * 1000:.1f}", describe_check(entry))
        console.print(checks)
        for component, pair in call["ice"]["selected"].items():
            if pair is not None:
                console.print(f"  component {component} selected: {pair['local_type']} "
                              f"{pair['local_address']} -> {pair['remote_type']} "
                              f"{pair['remote_address']}")
        setup = call["setup"]
        console.print(f"  INVITE -> 200 OK {setup['invite_to_answer_ms']} ms, -> ICE completed "
                      f"{setup['invite_to_ice_completed_ms']} ms, -> first RTP "
                      f"{setup['invite_to_first_rtp_ms']} ms")
        session = (call.get("media") or {}).get("session") or {}
        out, into = session.get("outbound") or {}, session.get("inbound") or {}
        if out or into:
            jitter = into.get("jitter")
            console.print(
                f"  audio (alice): {out.get('packetsSent', 0)} RTP packets sent, "
                f"{into.get('packetsReceived', 0)} received, {into.get('packetsLost', 0)} lost"
                + (f", jitter {jitter * 1000:.2f} ms" if jitter is not None else ""))
        if call.get("mos") is not None:
            console.print(f"  estimated MOS {call['mos']:.2f}")
    audio = report.get("audio")
    if audio:
        console.print(f"  alice sent {audio['alice_sent_hz']:.0f} Hz, bob heard "
                      f"{audio['bob_heard_hz']} Hz; bob sent {audio['bob_sent_hz']:.0f} Hz, "
                      f"alice heard {audio['alice_heard_hz']} Hz")
    failed = f"[bold red]FAILED[/] {report.get('error', '')}"
    console.print(f"result: {'[bold green]OK[/]' if report['ok'] else failed}")

