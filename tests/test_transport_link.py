"""The two-party link (dpsnn.transport.link), between real processes on loopback, every wait bounded in time.

The test process plays one party and a child interpreter (:class:`Peer`) the other. The child follows
a plan given as JSON: the links it opens one after another, and for each the messages it sends and
receives. Each child costs an interpreter start and an import of torch (a few seconds on a loaded
machine), so one child serves every link of a test.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dpsnn.errors import ConfigError, TransportError
from dpsnn.transport import DTYPES, Link, MessageKind, parse_address
from dpsnn.transport import link as link_module
from dpsnn.transport.link import HEADER_SIZE, MAGIC, Header, check_header, decode_header, encode_header

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 2.0  # seconds a send or a receive waits in these tests
START = 60.0  # seconds a party waits for the other to connect: a child first starts Python and imports torch
SLACK = 3.0  # seconds of scheduling on a loaded machine, on top of a timeout

PEER = r"""
import json, sys, time
import torch
from dpsnn.errors import TransportError
from dpsnn.transport import Link
from dpsnn.transport.link import HEADER_TAG


def report(**event):
    print(json.dumps(event), flush=True)


def tensor(dtype, shape):
    numel = 1
    for size in shape:
        numel *= size
    return torch.arange(numel).reshape(shape).to(getattr(torch, dtype))


def act(link, action):
    name, *args = action
    if name == "echo":  # receive each step's activation and send it back as that step's gradient
        for step in range(args[0]):
            link.send("gradient", step, link.recv("activation", step))
    elif name == "send":
        kind, step, dtype, shape = args
        link.send(kind, step, tensor(dtype, shape))
    elif name == "forge":  # a raw header, as a broken or hostile peer could send
        link._group.send([torch.tensor(args[0], dtype=torch.int64)], link._peer_rank, HEADER_TAG).wait()
    elif name == "recv":
        link.recv(args[0], args[1])
    elif name == "report":
        report(said=args[0])
    elif name == "pause":
        time.sleep(args[0])
    elif name == "block":  # stay connected, saying nothing, until killed
        time.sleep(3600)


plan = json.loads(sys.argv[1])
for number, session in enumerate(plan["sessions"]):
    try:
        with Link.open(plan["address"], plan["role"], timeout=plan["timeout"], connect_timeout=plan["start"]) as link:
            report(opened=number)
            for action in session:
                act(link, action)
    except TransportError as error:
        report(error=str(error), session=number)
report(done=True)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Peer:
    """The other party, in a child interpreter following ``sessions`` (a list of action lists)."""

    def __init__(self, role: str, port: int, sessions: list[list[list]], timeout: float = TIMEOUT) -> None:
        plan = dict(role=role, address=f"127.0.0.1:{port}", timeout=timeout, start=START, sessions=sessions)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.stderr = tempfile.TemporaryFile("w+")  # torch's C++ warnings: a file, as a full pipe would block the peer
        self.process = subprocess.Popen(
            [sys.executable, "-c", PEER, json.dumps(plan)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def next_event(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"the peer ended early: {self.stderr_tail()}"
        return json.loads(line)

    def events(self) -> list[dict]:
        """Every event until the peer ends (it must end within START seconds)."""
        out, _ = self.process.communicate(timeout=START)
        assert self.process.returncode == 0, self.stderr_tail()
        return [json.loads(line) for line in out.splitlines()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def peers():
    """Start peers; whatever a test leaves running is killed at its end."""
    started: list[Peer] = []

    def start(*args, **kwargs) -> Peer:
        started.append(Peer(*args, **kwargs))
        return started[-1]

    yield start
    for peer in started:
        peer.kill()
        peer.process.stdout.close()
        peer.stderr.close()


def sample_tensors() -> list[torch.Tensor]:
    """Every dtype in several shapes (a scalar, empty, 1-D to 8-D), with values that test exactness."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(), (0,), (7,), (3, 5), (2, 3, 1, 4), (1, 2, 1, 2, 1, 2, 1, 2)]
    tensors = []
    for dtype in DTYPES:
        for shape in shapes:
            values = torch.randn(shape, generator=generator, dtype=torch.float64) * 1000
            tensors.append(values > 0 if dtype == torch.bool else values.to(dtype))
    tensors.append(torch.tensor([torch.finfo(torch.float32).tiny, float("inf"), -0.0, 1e38]))  # edge values
    tensors.append(torch.arange(12.0).reshape(3, 4).t())  # not contiguous
    tensors.append(torch.ones(4, 5, requires_grad=True) * 2)  # part of a graph
    return tensors


def test_tensors_round_trip_exactly_in_both_directions(peers):
    tensors = sample_tensors()
    port = free_port()
    peers("server", port, [[["echo", len(tensors)]]])
    with Link.open(f"127.0.0.1:{port}", "client", timeout=TIMEOUT, connect_timeout=START) as link:
        assert not dist.is_initialized(), "opening a link must not create torch's default process group"
        for step, sent in enumerate(tensors):
            link.send("activation", step, sent)
            back = link.recv("gradient", step, dtype=sent.dtype, shape=sent.shape)
            assert back.dtype == sent.dtype and back.shape == sent.shape, (step, sent.dtype, sent.shape)
            assert not back.requires_grad
            assert torch.equal(back.view(-1).view(torch.uint8), sent.detach().contiguous().view(-1).view(torch.uint8))
    assert link.closed and not dist.is_initialized()


def forged(values: list[int]) -> list[int]:
    return values + [0] * (HEADER_SIZE - len(values))


# What the peer sends, what this side expects (recv's arguments), and the refusal it must give.
REFUSALS = [
    (
        ["send", "gradient", 0, "float32", [3]],
        ("activation", 0, {}),
        "the client sent 'gradient' for step 0 where 'activation' for step 0 was expected",
    ),
    (
        ["send", "activation", 13, "float32", [3]],
        ("activation", 12, {}),
        "the client sent 'activation' for step 13 where 'activation' for step 12 was expected",
    ),
    (
        ["send", "activation", 1, "float64", [3]],
        ("activation", 1, {"dtype": torch.float32}),
        "the client sent 'activation' for step 1 as float64 where float32 was expected",
    ),
    (
        ["send", "activation", 1, "float32", [4, 3]],
        ("activation", 1, {"shape": (None, 4)}),
        "the client sent 'activation' for step 1 of shape (4, 3) where (*, 4) was expected",
    ),
    (
        ["send", "activation", 1, "float32", [12]],
        ("activation", 1, {"shape": (None, None)}),
        "the client sent 'activation' for step 1 of shape (12,) where (*, *) was expected",
    ),
    (
        ["send", "labels", 2, "int64", [100]],
        ("labels", 2, {"max_elements": 99}),
        "the client announced 'labels' for step 2 of shape (100,): 100 elements, more than the 99 allowed",
    ),
    (  # 2**40 float32 (4 TiB): refused from the header, before anything is allocated
        ["forge", forged([MAGIC, 1, 1, 5, 1, 2, 1 << 20, 1 << 20])],
        ("activation", 5, {}),
        "the client announced 'activation' for step 5 of shape (1048576, 1048576): "
        "1099511627776 elements, more than the 268435456 allowed",
    ),
    (
        ["forge", forged([MAGIC, 1, 1, 5, 1, 1, -4])],
        ("activation", 5, {}),
        "the client sent 'activation' for step 5 of impossible shape (-4,)",
    ),
    (
        ["forge", forged([MAGIC, 1, 1, 5, 1, 9])],
        ("activation", 5, {}),
        "the client sent 'activation' for step 5 with 9 dims where at most 8 are allowed",
    ),
    (
        ["forge", forged([MAGIC, 1, 42, 5])],
        ("activation", 5, {}),
        "the client sent a message of unknown kind (code 42) for step 5",
    ),
    (
        ["forge", forged([MAGIC, 1, 1, 5, 99])],
        ("activation", 5, {}),
        "the client sent 'activation' for step 5 of unknown dtype (code 99)",
    ),
    (
        ["forge", forged([MAGIC, 2, 1, 5])],
        ("activation", 5, {}),
        "the client speaks transport version 2 and this side version 1",
    ),
    (
        ["forge", forged([int.from_bytes(b"GET / HT", "little")])],
        ("activation", 5, {}),
        "the client sent something that is not a dpsnn message (no dpsnn header)",
    ),
]


def test_wrong_messages_are_refused_before_their_payload(peers):
    port = free_port()
    # After a forged header the peer waits for an answer: the refusal must end its link too.
    peer = peers(
        "client", port, [[action] + [["recv", "ack", 0]] * (action[0] == "forge") for action, _, _ in REFUSALS]
    )
    refusals = []
    for _, (kind, step, expected), _ in REFUSALS:  # every link on the same port: a closed link frees it at once
        link = Link.open(f"127.0.0.1:{port}", "server", timeout=TIMEOUT, connect_timeout=START)
        with pytest.raises(TransportError) as refused:
            link.recv(kind, step, **expected)
        refusals.append(str(refused.value))
        assert link.closed  # a refusal ends the link: the refused payload is still queued on the sender
    assert refusals == [message for _, _, message in REFUSALS]
    # The peer learns at once that the server hung up (while it sent the refused payload, or waited for an
    # answer to its forged header), not after its timeout.
    errors = [event for event in peer.events() if "error" in event]
    assert [event["session"] for event in errors] == list(range(len(REFUSALS)))
    for event, (action, _, _) in zip(errors, REFUSALS, strict=True):
        doing = "sent" if action[0] == "send" else "waited for 'ack' for step 0"
        assert event["error"].startswith(f"the server closed the connection or died while the client {doing}")


def test_silence_times_out_within_the_timeout_in_both_directions(peers):
    port = free_port()
    # The peer waits for a message that never comes, then sits on a message it never reads.
    peer = peers("client", port, [[["report", "ready"], ["recv", "stop", 0]], [["report", "ready"], ["pause", 2]]])
    with Link.open(f"127.0.0.1:{port}", "server", timeout=TIMEOUT, connect_timeout=START) as link:
        assert peer.next_event() == {"opened": 0} and peer.next_event() == {"said": "ready"}
        started = time.monotonic()
        with pytest.raises(TransportError) as silent:
            link.recv("activation", 3, timeout=1.0)
        waited = time.monotonic() - started
        assert str(silent.value) == "no message from the client within 1 s (waiting for 'activation' for step 3)"
        assert 0.9 <= waited <= 1.0 + SLACK, waited
        with pytest.raises(TransportError, match=r"^the link of the server to the client is closed \(no message"):
            link.send("gradient", 3, torch.ones(2))
    # A send waits for the receiver too: a message nobody reads times out the same way.
    with Link.open(f"127.0.0.1:{port}", "server", timeout=TIMEOUT, connect_timeout=START) as link:
        assert peer.next_event()["error"].startswith("the server closed the connection or died while the client waited")
        assert peer.next_event() == {"opened": 1} and peer.next_event() == {"said": "ready"}
        started = time.monotonic()
        with pytest.raises(TransportError, match=r"^the client did not take 'gradient' for step 0 within 1 s$"):
            link.send("gradient", 0, torch.ones(2), timeout=1.0)
        assert 0.9 <= time.monotonic() - started <= 1.0 + SLACK


def test_close_returns_at_once_whether_the_peer_is_there_or_gone(peers):
    port = free_port()
    peer = peers("client", port, [[["report", "ready"], ["recv", "stop", 0]], []])
    link = Link.open(f"127.0.0.1:{port}", "server", timeout=TIMEOUT, connect_timeout=START)
    assert peer.next_event() == {"opened": 0} and peer.next_event() == {"said": "ready"}
    started = time.monotonic()
    link.close()
    link.close()
    assert time.monotonic() - started < 1.0 and link.closed
    # The peer, waiting for a message, learns at once that the server left.
    error = peer.next_event()
    assert error == {
        "error": "the server closed the connection or died while the client waited for 'stop' for step 0",
        "session": 0,
    }
    # The peer connects again (the closed server freed its port), leaves at once and ends.
    link = Link.open(f"127.0.0.1:{port}", "server", timeout=TIMEOUT, connect_timeout=START)
    assert peer.events() == [{"opened": 1}, {"done": True}]
    with pytest.raises(
        TransportError,
        match="^the client closed the connection or died while the server waited for 'activation' for step 0$",
    ):
        link.recv("activation", 0)  # a peer that closed cleanly looks like one that died: roles say goodbye first
    started = time.monotonic()
    link.close()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("killed", ["client", "server"])
def test_a_killed_peer_is_noticed_within_the_timeout(peers, killed):
    """The peer sends three messages, then is killed (SIGKILL) while this side waits for the fourth."""
    port = free_port()
    peer = peers(killed, port, [[["send", "activation", step, "float32", [2, 3]] for step in range(3)] + [["block"]]])
    survivor = "server" if killed == "client" else "client"
    with Link.open(f"127.0.0.1:{port}", survivor, timeout=TIMEOUT, connect_timeout=START) as link:
        for step in range(3):
            assert torch.equal(link.recv("activation", step, dtype=torch.float32), torch.arange(6.0).reshape(2, 3))
        timer = threading.Timer(0.3, peer.kill)
        timer.start()
        started = time.monotonic()
        with pytest.raises(TransportError) as lost:
            link.recv("activation", 3, timeout=TIMEOUT)
        waited = time.monotonic() - started
        timer.join()
    # Not a timeout: the kernel closes a killed process's sockets, and gloo sees the connection close.
    assert str(lost.value) == (
        f"the {killed} closed the connection or died while the {survivor} waited for 'activation' for step 3"
    )
    assert waited <= TIMEOUT + SLACK, waited


def test_connecting_to_nobody_fails_within_the_timeout():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TransportError, match=rf"^the server at 127\.0\.0\.1:{port} did not answer within 1 s$"):
        Link.open(f"tcp://127.0.0.1:{port}", "client", timeout=1.0)
    assert 0.9 <= time.monotonic() - started <= 1.0 + SLACK
    failures = []  # the failed server has freed its port, its error still alive: a second one listens there at once
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(TransportError, match=rf"^no client connected to 127\.0\.0\.1:{port} within 1 s$") as failed:
            Link.open(f"127.0.0.1:{port}", "server", timeout=1.0)
        failures.append(failed.value)
        assert time.monotonic() - started <= 1.0 + SLACK
    with pytest.raises(TransportError, match=r"^cannot find the server's host 'no-such-host\.invalid'"):
        Link.open("no-such-host.invalid:29500", "client", timeout=1.0)
    assert not dist.is_initialized()


def test_a_port_in_use_is_refused_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            TransportError, match=rf"^the server cannot listen at 127\.0\.0\.1:{port}: the port is in use$"
        ):
            Link.open(f"127.0.0.1:{port}", "server", timeout=1.0)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="bad address 'localhost'"):
        Link.open("localhost", "server")
    with pytest.raises(ConfigError, match="unknown role 'attacker'"):
        Link.open("127.0.0.1:29500", "attacker")
    with pytest.raises(ConfigError, match="a timeout is a positive number of seconds"):
        Link.open("127.0.0.1:29500", "server", timeout=0)
    with pytest.raises(ConfigError, match="unknown message kind 'weights2'"):
        MessageKind.named("weights2")
    assert MessageKind.named("logits") is MessageKind.LOGITS
    with pytest.raises(ConfigError, match="a link cannot carry complex64 tensors"):
        encode_header("activation", 0, torch.complex64, (2,))
    with pytest.raises(ConfigError, match="at most 8 dims"):
        encode_header("activation", 0, torch.float32, (1,) * 9)
    with pytest.raises(ConfigError, match="a step is a 64-bit integer"):
        encode_header("activation", 1 << 63, torch.float32, (1,))


def test_addresses(monkeypatch):
    assert parse_address("127.0.0.1:29500") == ("127.0.0.1", 29500)
    assert parse_address("tcp://example.org:1234") == ("example.org", 1234)
    assert parse_address("[::1]:29500") == ("::1", 29500)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.2")
    monkeypatch.setenv("MASTER_PORT", "29501")
    assert parse_address("env://") == ("10.0.0.2", 29501)
    for bad in ("", "host", "host:", ":29500", "host:0", "host:65536", "host:port"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def test_headers_encode_and_decode():
    header = encode_header("gradient", -7, torch.bfloat16, (128, 1, 28))
    assert header.dtype == torch.int64 and header.shape == (HEADER_SIZE,)
    assert decode_header(header, "client") == Header(MessageKind.GRADIENT, -7, torch.bfloat16, (128, 1, 28))
    scalar = decode_header(encode_header(MessageKind.ACK, 0, torch.bool, ()), "server")
    assert scalar.shape == () and scalar.numel == 1
    check_header(decode_header(header, "client"), "client", "gradient", -7, torch.bfloat16, (None, 1, 28))


def test_no_pickle_and_no_rpc_on_the_wire():
    """Nothing received is unpickled or run: the module imports no pickling and no RPC, and calls no object API."""
    source = Path(link_module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert not imported & {"pickle", "cloudpickle", "dill", "marshal", "torch.distributed.rpc", "io"}
    called = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    objects = {
        "send_object_list",
        "recv_object_list",
        "broadcast_object_list",
        "load",
        "loads",
        "rpc",
        "init_process_group",
    }
    assert not called & objects, called & objects
