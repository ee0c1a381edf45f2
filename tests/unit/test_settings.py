"""Settings dataclasses and the loader: layers, precedence, errors, generated files."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipua import config as config_module
from sipua.config import (
    DEFAULTS_FILE,
    DOCS_FILE,
    config_search_path,
    find_config_file,
    load_settings,
    render_defaults,
    render_reference,
    render_toml,
    settings_from_dict,
)
from sipua.errors import ConfigError, UserError
from sipua.settings import (
    Account,
    AnswerPolicy,
    IceConfig,
    LoggingConfig,
    MediaConfig,
    SettingError,
    Settings,
    TurnServer,
    UaSettings,
    field_docs,
    parse_hostport,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.toml"))
SECTIONS = (Settings, UaSettings, Account, TurnServer, IceConfig, MediaConfig, AnswerPolicy,
            LoggingConfig)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An empty working directory and home, so no real config file is found."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"HOME": str(tmp_path / "home")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


ALICE = """
[[accounts]]
name = "alice"
uri = "sip:alice@example.org"
"""


# --- defaults and locations ----------------------------------------------------------------------

def test_defaults_load_without_any_file(home: dict[str, str]) -> None:
    """No file anywhere and no SIPUA_* variables give exactly the dataclass defaults."""
    loaded = load_settings(env=home)
    assert loaded == Settings()
    assert loaded.ua.listen == ("0.0.0.0:5060",)
    assert loaded.ua.transports == ("udp", "tcp")
    assert loaded.ice.candidate_types == ("host", "srflx", "relay")
    assert loaded.media.codecs == ("PCMU", "PCMA")
    assert loaded.accounts == ()
    assert loaded.ua.user_agent.startswith("sipua/")


def test_search_order(home: dict[str, str], tmp_path: Path) -> None:
    """$SIPUA_CONFIG beats ./sipua.toml, which beats $XDG_CONFIG_HOME/sipua/config.toml."""
    xdg = write(tmp_path / "xdg" / "sipua" / "config.toml", "[media]\nptime = 30\n")
    env = {**home, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert load_settings(env=env).media.ptime == 30
    assert find_config_file(env) == xdg
    write(Path("sipua.toml"), "[media]\nptime = 40\n")
    assert load_settings(env=env).media.ptime == 40
    named = write(tmp_path / "named.toml", "[media]\nptime = 50\n")
    assert load_settings(env={**env, "SIPUA_CONFIG": str(named)}).media.ptime == 50
    assert config_search_path({**env, "SIPUA_CONFIG": str(named)})[0] == named


def test_home_config_without_xdg(home: dict[str, str]) -> None:
    """Without XDG_CONFIG_HOME the file is ~/.config/sipua/config.toml."""
    write(Path(home["HOME"]) / ".config" / "sipua" / "config.toml", "[ice]\nlite = true\n")
    assert load_settings(env=home).ice.lite is True


def test_missing_named_files_are_errors(home: dict[str, str], tmp_path: Path) -> None:
    """A path asked for (argument or $SIPUA_CONFIG) that does not exist is a ConfigError."""
    assert "nope.toml" in load_error(tmp_path / "nope.toml", env=home)
    message = load_error(env={**home, "SIPUA_CONFIG": str(tmp_path / "gone.toml")})
    assert "gone.toml" in message and "SIPUA_CONFIG" in message
    assert issubclass(ConfigError, UserError)


# --- layers and precedence -----------------------------------------------------------------------

def test_file_overrides_defaults(tmp_path: Path) -> None:
    """Keys in the file replace defaults; keys it leaves out keep them."""
    path = write(tmp_path / "a.toml", ALICE + """
[ua]
transports = ["udp"]
t1 = 1
[ice]
nomination = "aggressive"
stun_servers = ["stun.example.org", "[2001:db8::1]:3479"]
[[ice.turn_servers]]
uri = "turn:turn.example.org?transport=tcp"
username = "u"
""")
    loaded = load_settings(path, env={})
    assert loaded.ice.nomination == "aggressive"
    assert loaded.ice.ta == IceConfig().ta  # left out: keeps the default
    assert loaded.ua.t1 == 1.0 and isinstance(loaded.ua.t1, float)
    assert loaded.ua.transports == ("udp",)
    assert loaded.accounts[0].uri == "sip:alice@example.org"
    assert loaded.ice.turn_servers == (TurnServer("turn:turn.example.org?transport=tcp", "u"),)
    assert loaded.ice.stun_addresses() == (("stun.example.org", 3478), ("2001:db8::1", 3479))


def test_env_overrides_file(tmp_path: Path) -> None:
    """SIPUA_* variables beat the file, convert by type and reach accounts by index or name."""
    path = write(tmp_path / "a.toml", ALICE + '[ice]\nnomination = "regular"\n')
    env = {
        "SIPUA_ICE__NOMINATION": "aggressive",
        "SIPUA_ICE__TA": "0.02",
        "SIPUA_ICE__LITE": "Yes",
        "SIPUA_UA__LISTEN": "127.0.0.1:5070, [::1]:5070",
        "SIPUA_MEDIA__PTIME": "30",
        "SIPUA_ACCOUNTS__0__PASSWORD": "pw0",
        "SIPUA_ACCOUNTS__ALICE__DISPLAY_NAME": "Alice",
        "SIPUA_LOGGING__LEVEL": "DEBUG",
        "SIPUA_CONFIG_IS_NOT_A_SETTING": "ignored",
        "PATH": "/usr/bin",
    }
    loaded = load_settings(path, env=env)
    assert loaded.ice.nomination == "aggressive"
    assert loaded.ice.ta == 0.02
    assert loaded.ice.lite is True
    assert loaded.ua.listen == ("127.0.0.1:5070", "[::1]:5070")
    assert loaded.media.ptime == 30
    assert loaded.accounts[0].password == "pw0"
    assert loaded.accounts[0].display_name == "Alice"
    assert loaded.logging.level == "debug"


def test_env_adds_entries_and_unsets(tmp_path: Path) -> None:
    """The next free index adds an entry; an empty value unsets an optional key."""
    path = write(tmp_path / "a.toml", ALICE + '[answer]\nrecord = "/tmp/r.wav"\n')
    env = {
        "SIPUA_ACCOUNTS__1__NAME": "bob",
        "SIPUA_ACCOUNTS__1__URI": "sip:bob@example.org",
        "SIPUA_ICE__TURN_SERVERS": '[{uri = "turn:192.0.2.1", username = "u"}]',
        "SIPUA_ICE__TURN_SERVERS__0__PASSWORD": "p",
        "SIPUA_ANSWER__RECORD": "",
    }
    loaded = load_settings(path, env=env)
    assert [a.name for a in loaded.accounts] == ["alice", "bob"]
    assert loaded.ice.turn_servers == (TurnServer("turn:192.0.2.1", "u", "p"),)
    assert loaded.answer.record is None


def test_overrides_beat_env(tmp_path: Path) -> None:
    """Dotted overrides (CLI flags) win over the environment, typed or as text."""
    path = write(tmp_path / "a.toml", ALICE)
    env = {"SIPUA_ICE__NOMINATION": "aggressive", "SIPUA_ACCOUNTS__0__PASSWORD": "env"}
    loaded = load_settings(path, env=env, overrides={
        "ice.nomination": "regular", "accounts.alice.password": "flag", "media.ptime": "40",
        "answer.auto_answer": True, "answer.duration": None, "logging": {"json": True},
    })
    assert loaded.logging.json is True and loaded.logging.level == "info"
    assert loaded.ice.nomination == "regular"
    assert loaded.accounts[0].password == "flag"
    assert loaded.media.ptime == 40
    assert loaded.answer.auto_answer is True


def test_settings_load_delegates(tmp_path: Path) -> None:
    """Settings.load is load_settings."""
    path = write(tmp_path / "a.toml", "[media]\nptime = 60\n")
    loaded = Settings.load(path, env={}, overrides={"media.jitter_min_ms": 40})
    assert (loaded.media.ptime, loaded.media.jitter_min_ms) == (60, 40)


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    """Relative paths in a file resolve against its directory; ~ expands."""
    path = write(tmp_path / "rig" / "a.toml",
                 '[answer]\nplay = "p.wav"\nrecord = "/abs/r.wav"\n[logging]\nfile = "~/x.log"\n')
    loaded = load_settings(path, env={"HOME": str(tmp_path)})
    assert loaded.answer.play == str(tmp_path / "rig" / "p.wav")
    assert loaded.answer.record == "/abs/r.wav"
    assert loaded.logging.file is not None and not loaded.logging.file.startswith("~")


# --- errors --------------------------------------------------------------------------------------

def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    """A misspelt key names file and key and suggests the near one."""
    path = write(tmp_path / "alice.toml", '[ice]\nnominaton = "aggressive"\n')
    message = load_error(path, env={})
    assert message == (f"unknown key 'ice.nominaton' in {path} (did you mean "
                       f"'ice.nomination'?)")
    assert "'ua.t1'" in load_error(write(tmp_path / "b.toml", "[ua]\nt11 = 1\n"), env={})
    assert "'accounts.0.pasword'" in load_error(
        write(tmp_path / "c.toml", ALICE + 'pasword = "x"\n'), env={})
    assert "did you mean 'ice'" in load_error(write(tmp_path / "d.toml", "[icee]\n"), env={})


def test_unknown_key_in_env_and_overrides() -> None:
    """Environment and override mistakes are named in their own terms."""
    message = load_error(env={"SIPUA_ICE__NOMINATON": "x"})
    assert "SIPUA_ICE__NOMINATON" in message and "SIPUA_ICE__NOMINATION?" in message
    message = load_error(env={}, overrides={"media.ptim": 20})
    assert "overrides" in message and "'media.ptime'" in message
    assert "no keys below" in load_error(env={"SIPUA_UA__T1__X": "1"})
    assert "next one is 0" in load_error(env={"SIPUA_ACCOUNTS__3__URI": "sip:a@b"})
    assert "index or the name" in load_error(env={}, overrides={"accounts.zed.uri": "sip:a@b"})


BAD_VALUES = [
    ("[ua]\nt1 = \"fast\"\n", "ua.t1", "expected a number"),
    ("[ua]\nt1 = 0.0\n", "ua.t1", "from 0.001 to 60 seconds, got 0.0"),
    ("[ua]\nt1 = 1.0\nt2 = 0.5\n", "ua.t2", "t2 >= t1"),
    ("[ua]\ntransports = [\"udp\", \"sctp\"]\n", "ua.transports", "'udp', 'tcp', 'tls'"),
    ("[ua]\ntransports = []\n", "ua.transports", "at least one"),
    ("[ua]\nlisten = \"0.0.0.0\"\n", "ua.listen", "array of strings"),
    ("[ua]\nlisten = [\"::1:5060\"]\n", "ua.listen", "brackets"),
    ("[ua]\nlisten = [\"example.org\"]\n", "ua.listen", "IP address"),
    ("[ua]\nlisten = [\"1.2.3.4:70000\"]\n", "ua.listen", "port"),
    ("[ua]\ntls_cert_file = \"c.pem\"\n", "ua.tls_key_file", "tls_cert_file is set"),
    ("[ua]\ntls_verify = 1\n", "ua.tls_verify", "true or false"),
    ("[ua]\ntcp_threshold = 1300.5\n", "ua.tcp_threshold", "an integer"),
    ("[ice]\nnomination = \"agressive\"\n", "ice.nomination", "'regular', 'aggressive'"),
    ("[ice]\nta = 0.001\n", "ice.ta", "from 0.005 to 10 seconds"),
    ("[ice]\ncandidate_types = [\"host\", \"prflx\"]\n", "ice.candidate_types", "one of"),
    ("[ice]\ncandidate_types = [\"host\", \"host\"]\n", "ice.candidate_types", "twice"),
    ("[ice]\nstun_servers = [\"stun.example.org:0\"]\n", "ice.stun_servers", "port"),
    ("[ice]\nconsent_timeout = 2.0\n", "ice.consent_timeout", "consent_interval"),
    ("[[ice.turn_servers]]\nuri = \"stun:x\"\n", "ice.turn_servers.0.uri", "TURN URI"),
    ("[[ice.turn_servers]]\nuri = \"turn:x?transport=sctp\"\n", "ice.turn_servers.0.uri",
     "transport"),
    ("[ice]\nturn_servers = \"turn:x\"\n", "ice.turn_servers", "array of tables"),
    ("[media]\ncodecs = [\"opus9\"]\n", "media.codecs", "'PCMU'"),
    ("[media]\nptime = 5\n", "media.ptime", "from 10 to 200"),
    ("[media]\ndtmf_payload_type = 8\n", "media.dtmf_payload_type", "96"),
    ("[media]\njitter_min_ms = 300\n", "media.jitter_max_ms", "jitter_min_ms"),
    ("[answer]\ncode = 302\n", "answer.code", "400 to 699"),
    ("[answer]\nmax_calls = -1\n", "answer.max_calls", "at least 0"),
    ("[answer]\nplay = \"a.wav\"\necho = true\n", "answer.echo", "play"),
    ("[answer]\nduration = 0\n", "answer.duration", "at least"),
    ("[logging]\nlevel = \"loud\"\n", "logging.level", "'debug'"),
    ("[logging]\nfile = \"\"\n", "logging.file", "non-empty"),
    ("ua = 3\n", "ua", "a table"),
    ("accounts = 3\n", "accounts", "array of tables"),
    (ALICE.replace("sip:alice@", "alice@"), "accounts.0.uri", "SIP URI"),
    (ALICE.replace("sip:alice@example.org", "sip:example.org"), "accounts.0.uri", "user part"),
    (ALICE.replace("sip:alice@example.org", "Alice <sip:a@b>"), "accounts.0.uri", "display_name"),
    (ALICE.replace('"alice"', '"al ice"'), "accounts.0.name", "letters"),
    (ALICE + 'transport = "tls"\n', "accounts.0.transport", "not enabled in ua.transports"),
    (ALICE + "expires = 0\n", "accounts.0.expires", "from 1"),
    (ALICE + 'registrar = "[::1"\n', "accounts.0.registrar", "bracket"),
    (ALICE + 'nomination = "lazy"\n', "accounts.0.nomination", "'regular'"),
    (ALICE + ALICE, "accounts", "twice"),
    ("[[accounts]]\nname = \"a\"\n", "accounts.0.uri", "such as \"sip:alice@example.org\""),
]


@pytest.mark.parametrize("text,key,expected", BAD_VALUES,
                         ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(BAD_VALUES)])
def test_bad_value_names_file_and_key(tmp_path: Path, text: str, key: str,
                                      expected: str) -> None:
    """Wrong types, ranges, enumerations and forms each give a ConfigError naming file and key."""
    path = write(tmp_path / "bad.toml", text)
    message = load_error(path, env={})
    assert str(path) in message
    assert f"'{key}'" in message
    assert expected in message
    assert "\n" not in message


def test_bad_env_values_name_the_variable() -> None:
    """An environment value of the wrong type or range names its variable."""
    for name, value, key in [("SIPUA_ICE__TA", "abc", "ice.ta"),
                             ("SIPUA_UA__TLS_VERIFY", "maybe", "ua.tls_verify"),
                             ("SIPUA_MEDIA__PTIME", "2.5", "media.ptime"),
                             ("SIPUA_MEDIA__PTIME", "1000", "media.ptime"),
                             ("SIPUA_ICE__TURN_SERVERS", "[{uri=", "ice.turn_servers")]:
        message = load_error(env={name: value})
        assert name in message and f"'{key}'" in message, message


def test_cross_check_names_the_source_that_set_a_key(tmp_path: Path) -> None:
    """A check across keys names a source that set one of them, not the defaults."""
    message = load_error(env={"SIPUA_UA__T1": "9"})
    assert "'ua.t2'" in message and "SIPUA_UA__T1" in message


def test_bad_toml_gives_the_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    path = write(tmp_path / "syntax.toml", "[ua]\nt1 = 0.5\nt2 = = 4\n")
    message = load_error(path, env={})
    assert str(path) in message and "line 3" in message
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[ua]\n")
    assert "UTF-8" in load_error(binary, env={})


def test_direct_construction_raises_setting_error() -> None:
    """Built in code, a bad value is a ValueError naming the key."""
    with pytest.raises(SettingError, match="nomination") as info:
        IceConfig(nomination="fast")
    assert isinstance(info.value, ValueError)
    assert info.value.keys == ("nomination",)
    with pytest.raises(SettingError, match="uri"):
        Account("a", "mailto:a@b")
    with pytest.raises(SettingError, match=r"accounts\.0\.transport"):
        Settings(ua=UaSettings(transports=("udp",)), accounts=(Account("a", "sip:a@b",
                                                                        transport="tcp"),))


# --- forms and helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("example.org", ("example.org", None)),
    ("example.org:5070", ("example.org", 5070)),
    ("192.0.2.1:5060", ("192.0.2.1", 5060)),
    ("[2001:db8::1]:5060", ("2001:db8::1", 5060)),
    ("[::1]", ("::1", None)),
    ("host.", ("host.", None)),
])
def test_parse_hostport_accepts(text: str, expected: tuple[str, int | None]) -> None:
    """HOST[:PORT] with names, IPv4 and bracketed IPv6."""
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", " x", "::1", "[::1", "[::1]5060", "[nothex]", "a:b",
                                  "a:0", "a:65536", "999.1.1.1", "-bad.example", "a..b", "a b"])
def test_parse_hostport_rejects(text: str) -> None:
    """Malformed forms raise ValueError."""
    with pytest.raises(ValueError):
        parse_hostport(text)


def test_account_and_turn_helpers() -> None:
    """Derived values: auth user, registrar target, TURN ports by scheme."""
    account = Account("a", "sips:alice@[2001:db8::5]:5071;transport=tcp")
    assert account.user == "alice" and account.auth_user == "alice"
    assert account.domain == "2001:db8::5"
    assert account.registrar_hostport() == ("2001:db8::5", 5071)
    other = Account("b", "sip:bob@example.org", auth_username="b0b",
                    registrar="reg.example.org:5080")
    assert other.auth_user == "b0b"
    assert other.registrar_hostport() == ("reg.example.org", 5080)
    turns = TurnServer("turns:turn.example.org")
    assert (turns.host, turns.port, turns.transport, turns.secure) == (
        "turn.example.org", 5349, "tcp", True)
    plain = TurnServer("turn:[::1]:3479?transport=udp")
    assert (plain.host, plain.port, plain.transport, plain.secure) == ("::1", 3479, "udp", False)
    assert UaSettings(listen=("[::]:0", "127.0.0.1")).listen_addresses() == (("::", 0),
                                                                             ("127.0.0.1", None))


def test_account_lookup() -> None:
    """Settings.account finds by name, defaults to the first, and says what exists."""
    both = Settings(accounts=(Account("a", "sip:a@x"), Account("b", "sip:b@x")))
    assert both.account().name == "a" and both.account("b").name == "b"
    with pytest.raises(KeyError, match="a, b"):
        both.account("c")
    with pytest.raises(KeyError):
        Settings().account()


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after construction (use dataclasses.replace)."""
    value = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.ice.ta = 1.0  # type: ignore[misc]
    assert dataclasses.replace(value.ice, ta=0.1).ta == 0.1


# --- round trips and generated files -------------------------------------------------------------

FULL = Settings(
    ua=UaSettings(listen=("[::]:5062",), transports=("udp", "tls"), tls_ca_file="/ca.pem",
                  t1=0.25),
    accounts=(Account("alice", "sip:alice@example.org", password="p\"w\\", transport="tls",
                      nomination="aggressive"),
              Account("bob", "sip:bob@example.org", display_name="Bob Ünicode", register=False)),
    ice=IceConfig(stun_servers=("stun:s.example.org",), turn_servers=(
        TurnServer("turn:t.example.org", "u", "p"),), candidate_types=("relay",),
        interfaces=("eth0",)),
    media=MediaConfig(codecs=("PCMA",), ptime=30),
    answer=AnswerPolicy(auto_answer=True, play="/p.wav", duration=2.5, code=486),
    logging=LoggingConfig(level="warning", json=True),
)


def test_to_dict_round_trip() -> None:
    """to_dict gives plain data that from_dict turns back into equal settings."""
    data = FULL.to_dict()
    assert data["accounts"][1]["register"] is False
    assert data["ua"]["listen"] == ["[::]:5062"]
    assert data["answer"]["record"] is None
    assert Settings.from_dict(data) == FULL
    assert settings_from_dict(Settings().to_dict()) == Settings()


def test_toml_round_trip(tmp_path: Path) -> None:
    """render_toml writes a file that loads back to the same settings."""
    path = write(tmp_path / "full.toml", render_toml(FULL))
    assert load_settings(path, env={}) == FULL


def test_examples_load() -> None:
    """Every example in config/examples loads without error and differs from the defaults."""
    assert len(EXAMPLES) == 3
    for path in EXAMPLES:
        loaded = load_settings(path, env={})
        assert loaded != Settings(), path
        assert loaded.accounts, path


def test_defaults_file_is_fresh() -> None:
    """config/defaults.toml matches the dataclasses."""
    assert DEFAULTS_FILE.read_text(encoding="utf-8") == render_defaults(), (
        "config/defaults.toml is stale: run python -m sipua.config --write-defaults")


def test_defaults_file_loads_to_defaults() -> None:
    """The generated defaults file is valid TOML that loads to Settings() itself."""
    assert load_settings(DEFAULTS_FILE, env={}) == Settings()
    text = render_defaults()
    for cls in SECTIONS:
        for f in dataclasses.fields(cls):
            shown = (f"{f.name} = ", f"[{f.name}]", f".{f.name}]")
            assert any(form in text for form in shown), f.name


def test_docs_reference_is_fresh() -> None:
    """The key reference in docs/configuration.md matches the dataclasses."""
    text = DOCS_FILE.read_text(encoding="utf-8")
    assert render_reference() in text, (
        "docs/configuration.md is stale: run python -m sipua.config --write-docs")
    assert config_module.main(["--check"]) == 0


def test_write_defaults_entry_point(tmp_path: Path) -> None:
    """python -m sipua.config --write-defaults PATH writes the rendered file."""
    target = tmp_path / "d.toml"
    assert config_module.main(["--write-defaults", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_defaults()
    assert tomllib.loads(target.read_text(encoding="utf-8"))["ice"]["ta"] == IceConfig().ta


def test_show_hides_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """python -m sipua.config --show prints the effective settings without secrets."""
    path = write(tmp_path / "a.toml", ALICE + 'password = "hunter2"\n')
    assert config_module.main(["--show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and 'uri = "sip:alice@example.org"' in out
    assert config_module.main(["--show", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_every_field_is_documented() -> None:
    """Each field has a #: comment; optional fields default to None and carry an example."""
    for cls in SECTIONS:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no #: comment"
            required = f.default is dataclasses.MISSING and (
                f.default_factory is dataclasses.MISSING)
            if "None" in str(f.type):
                assert f.default is None, f"{cls.__name__}.{f.name}"
            if f.default is None or required:
                assert "example" in f.metadata, f"{cls.__name__}.{f.name} needs an example"


# --- garbage raises only ConfigError -------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
_keys = st.sampled_from(["ua", "accounts", "ice", "media", "answer", "logging", "nope",
                         "t1", "listen", "uri", "name", "turn_servers", "codecs"])
_trees = st.dictionaries(_keys, st.one_of(_values, st.dictionaries(_keys, _values, max_size=4),
                                          st.lists(st.dictionaries(_keys, _values), max_size=2)),
                         max_size=4)


@settings(max_examples=150, deadline=None)
@given(_trees)
def test_garbage_data_raises_only_config_error(data: dict[str, Any]) -> None:
    """Arbitrary nested data either builds valid settings or raises ConfigError, nothing else."""
    try:
        result = settings_from_dict(data)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(result, Settings)
        assert all(math.isfinite(v) for v in (result.ua.t1, result.ice.ta))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["SIPUA_UA__T1", "SIPUA_UA__LISTEN", "SIPUA_ICE__TURN_SERVERS",
                        "SIPUA_ACCOUNTS__0__URI", "SIPUA_ACCOUNTS__X__NAME", "SIPUA_ICE__LITE",
                        "SIPUA_MEDIA__CODECS", "SIPUA_ANSWER__DURATION", "SIPUA_UA____",
                        "SIPUA_ICE__TURN_SERVERS__0"]),
       st.text(max_size=30))
def test_garbage_env_raises_only_config_error(name: str, value: str) -> None:
    """Any text in any settings variable loads or raises ConfigError naming the variable."""
    try:
        load_settings(env={name: value})
    except ConfigError as exc:
        assert "SIPUA_" in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_garbage_toml_raises_only_config_error(text: str) -> None:
    """Any file content loads or raises ConfigError naming the file."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_settings(path, env={})
        except ConfigError as exc:
            assert str(path) in str(exc)
