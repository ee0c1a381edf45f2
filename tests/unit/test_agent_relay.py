"""Relayed candidates through a minimal in-memory TURN server: allocation during gathering,
permissions before checks, a relayed pair selected when no direct path exists, data both ways
wrapped and unwrapped, ChannelBind on selection and deallocation on close."""

from __future__ import annotations

from ice.agent import IceSettings
from ice.candidate import CandidateType
from ice.stun import is_channel_data
from ice.turn import TurnSettings
from tests.support.ice_harness import Packet, both_selected, connect, two_agents

TURN = ("192.0.2.50", 3478)


def _no_direct(p: Packet) -> bool:
    """Only the relay works: drop every packet between the two agents' own addresses."""
    agents = {("10.0.0.1", 1000), ("10.0.0.2", 2000)}
    return p.source in agents and p.dest in agents


def test_relay_selected_when_no_direct_path() -> None:
    """Agent a allocates a relay (after a 401), b reaches it only through the relay: the pair
    selected on a uses the relayed candidate and data flows both ways through TURN."""
    a_settings = IceSettings(turn_servers=(TurnSettings(TURN, "user", "pass"),),
                             nomination="aggressive")
    net = two_agents(a=a_settings, loss=_no_direct)
    server = net.add_turn_server(TURN, "192.0.2.51")
    a, b = net.agent("a"), net.agent("b")
    a.start_gathering(0.0)
    b.start_gathering(0.0)
    net.run(1.0, stop=lambda: a.gathering_complete)
    relays = [c for c in a.local_candidates if c.type is CandidateType.RELAY]
    assert len(relays) == 1 and relays[0].address[0] == "192.0.2.51"
    assert relays[0].related == ("10.0.0.1", 1000)
    connect(net, "a", "b")
    assert net.run(net.now + 3.0, stop=both_selected(net))
    pa, pb = a.selected_pair(1), b.selected_pair(1)
    assert pa is not None and pb is not None
    assert pa.local.type is CandidateType.RELAY and pb.remote.type is CandidateType.RELAY
    assert "10.0.0.2" in server.permissions[relays[0].address]
    net.run(net.now + 0.5)  # the ChannelBind completes
    a.send(1, b"\x80to b", net.now)
    b.send(1, b"\x80to a", net.now)
    net.run(net.now + 0.1)
    assert net.received("b")[-1].data == b"\x80to b"
    assert net.received("b")[-1].source == relays[0].address
    assert net.received("a")[-1].data == b"\x80to a"
    assert net.received("a")[-1].source == ("10.0.0.2", 2000)
    assert server.channels[relays[0].address]
    assert is_channel_data([p for p in net.sent if p.sender == "a"][-1].data)
    a.close(net.now)
    net.run(net.now + 1.0)
    assert server.released == [relays[0].address]
