"""``sipua stun-server`` as a user runs it: a real process answering a Binding request."""

from __future__ import annotations

import random
import socket
import subprocess
import sys

from ice import stun


def test_stun_server_answers_binding() -> None:
    """The server prints where it listens and answers with the client's address."""
    proc = subprocess.Popen([sys.executable, "-m", "sipua", "stun-server", "--listen",
                             "127.0.0.1:0", "--software", "test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        request = stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST,
                               stun.new_transaction_id(random.Random(1)), {})
        sock.sendto(request.encode(fingerprint=True), ("127.0.0.1", port))
        data, _ = sock.recvfrom(2048)
        answer = stun.decode(data)
        assert answer.cls is stun.MessageClass.SUCCESS
        assert answer.transaction_id == request.transaction_id
        assert answer.get(stun.Attr.XOR_MAPPED_ADDRESS) == sock.getsockname()
        assert answer.get(stun.Attr.SOFTWARE) == "test"
        sock.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_stun_server_bad_listen_address() -> None:
    """A malformed --listen is a one-line usage error with exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "sipua", "stun-server", "--listen", "x:y"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sipua: error:")
    assert "Traceback" not in proc.stderr
