"""The ``sipua`` pytest plugin (sipua/pytest_plugin.py): its fixtures used directly, and a
test rig that uses them run by pytest itself through ``pytester``; the runnable examples of
docs/api.md."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone

if TYPE_CHECKING:
    from sipua.pytest_plugin import AnsweringUA, RegistrarHandle, StunHandle, UserAgentFactory

#: The plugin comes from its pytest11 entry point once sipua is installed with it; until then
#: (an older install) this module loads it by name.
INSTALLED = any(ep.name == "sipua" for ep in entry_points(group="pytest11"))
pytest_plugins = ["pytester"] + ([] if INSTALLED else ["sipua.pytest_plugin"])

ROOT = Path(__file__).resolve().parents[1]


def _heard(sink: MemorySink) -> float:
    return float(dominant_frequency(sink.pcm[-8000:], max_seconds=0.5))


@pytest_twisted.ensureDeferred
async def test_fixtures_make_a_call_rig(sipua_ua_factory: UserAgentFactory,
                                        sipua_answering_ua: AnsweringUA,
                                        sipua_registrar: RegistrarHandle,
                                        sipua_stun_server: StunHandle) -> None:
    """alice (registered, with the STUN server) calls the answering bob by AOR through the
    registrar: both hear the other's tone; bob's recording and the registrar's events show
    the call; gathering asked the STUN server and it answered (on loopback its srflx
    candidate equals the host one and is dropped as redundant)."""
    alice = await sipua_ua_factory("alice", stun=True, seed=7)
    assert sipua_registrar.registered("alice") and sipua_registrar.registered("bob")
    heard = MemorySink()
    call = await alice.call(sipua_answering_ua.uri, source=Tone(440), sink=heard)
    await call.media_flowing(timeout=5.0)
    await task.deferLater(reactor, 0.8, lambda: None)
    await call.hangup()
    assert abs(_heard(heard) - sipua_answering_ua.tone) < 5
    (recording,) = sipua_answering_ua.recordings
    assert abs(_heard(recording) - 440) < 5
    report = call.report().to_dict()
    assert alice.settings.ice.stun_servers == (sipua_stun_server.address,)
    kinds = [e["event"] for e in report["ice"]["timeline"]]
    assert "GatheringCompleted" in kinds and "GatheringStepFailed" not in kinds
    assert any(type(e).__name__ == "RequestForwarded" for e in sipua_registrar.events)


@pytest_twisted.ensureDeferred
async def test_factory_makes_unregistered_agents_and_stops_them(
        sipua_ua_factory: UserAgentFactory) -> None:
    """Without a user, or with register=False, nothing is registered; every agent is started
    (has a local address) and tracked for teardown."""
    anonymous = await sipua_ua_factory()
    carol = await sipua_ua_factory("carol", register=False)
    assert anonymous.account is None and carol.account is not None
    assert anonymous.local_address[0] == "127.0.0.1"
    assert not sipua_ua_factory.registrar.registered("carol")
    assert sipua_ua_factory.created == [anonymous, carol]


RIG = '''
import pytest_twisted
from twisted.internet import reactor, task

from media.sinks import MemorySink
from media.sources import Tone


@pytest_twisted.ensureDeferred
async def test_rig(sipua_ua_factory, sipua_answering_ua):
    alice = await sipua_ua_factory("alice")
    call = await alice.call(sipua_answering_ua.uri, source=Tone(440), sink=MemorySink())
    await call.media_flowing(timeout=5.0)
    await call.hangup()
    assert call.report().to_dict()["status"] == 200
    assert len(sipua_answering_ua.recordings) == 1


def test_stun(sipua_stun_server):
    assert sipua_stun_server.address.startswith("127.0.0.1:")
'''


def test_plugin_through_pytester(pytester: pytest.Pytester) -> None:
    """A rig written against the fixtures passes when pytest runs it (in a subprocess, with
    the plugin from its pytest11 entry point when installed, else by -p)."""
    pytester.makepyfile(test_rig=RIG)
    args = ["-q", "-p", "no:cacheprovider"] + ([] if INSTALLED else ["-p", "sipua.pytest_plugin"])
    result = pytester.runpytest_subprocess(*args, timeout=120)
    result.assert_outcomes(passed=2)


def _examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_api_doc_examples_run(tmp_path: Path) -> None:
    """Every complete example in docs/api.md (a block that runs itself with task.react) runs
    to the end and exits 0."""
    runnable = [code for code in _examples() if "task.react" in code]
    assert len(runnable) >= 2
    for index, code in enumerate(runnable):
        script = tmp_path / f"example{index}.py"
        script.write_text(code, encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, check=False)
        assert done.returncode == 0, f"example {index}:\n{code}\n{done.stderr[-3000:]}"
