"""A point-to-point link between the two parties of a split network, on PyTorch's gloo backend.

In split learning the client (the data holder) and the server (the computation party) are
different processes, often on different hosts. A :class:`Link` joins exactly two of them:
the server (rank 0) hosts the rendezvous at ``HOST:PORT`` and the client (rank 1) connects
to it. Both then exchange CPU tensors in lock step with :meth:`Link.send` and
:meth:`Link.recv`.

Every message is a fixed-size header followed by its payload. The header is an int64 tensor
of :data:`HEADER_SIZE` numbers: a magic number and the format version, the message kind (a
:class:`MessageKind`), the step, a dtype code (:data:`DTYPES`), the number of dims and the
shape (up to :data:`MAX_DIMS` dims). The receiver states what it expects (kind and step,
and where it knows them the dtype, the shape and a maximum number of elements) and reads the
header first: a message of another kind, step, dtype or shape, or one larger than allowed,
is refused with a one-line :class:`~dpsnn.errors.TransportError` before its payload is
received, or even allocated. The payload is the tensor's raw bytes, in the byte order of the
hosts (little-endian on every platform PyTorch ships for). Nothing received is ever
unpickled or executed: the link uses ``torch.distributed`` point-to-point ``send``/``recv``
of plain tensors, never ``torch.distributed.rpc`` (which pickles functions and lets each
party run code on the other) nor ``send_object_list`` (which pickles). Example::

    import torch
    from dpsnn.transport import Link

    # in one process (or on one host): the server
    with Link.open("127.0.0.1:29500", "server") as link:
        h = link.recv("activation", 0, dtype=torch.float32, shape=(None, 500))
        link.send("gradient", 0, torch.ones_like(h))

    # in another: the client
    with Link.open("127.0.0.1:29500", "client") as link:
        link.send("activation", 0, torch.randn(32, 500))
        gradient = link.recv("gradient", 0, dtype=torch.float32, shape=(32, 500))

What is written here by hand, and why: the header and its checks (gloo moves bytes and knows
nothing of kinds or steps), and the mapping of gloo's failures onto one-line errors. The link
is built without torch's default process group (a ``TCPStore`` and a ``ProcessGroupGloo``
made directly), so ``torch.distributed.is_initialized()`` stays false and Lightning or
torchmetrics in either process never try to synchronise with the other party.

Timeouts and failures. Connecting and every send or receive wait at most a stated number of
seconds. A peer that does not connect, goes silent or stops gives a :class:`TransportError`
within that time; a peer that dies or closes its end is noticed at once (gloo sees the TCP
connection close). A gloo send completes only when the receiver has posted the matching
receive, so a send waits for the peer too. After any failure, refusals included, the link
closes itself: gloo drops the connection after a timed-out wait, and a refused message's
payload is still queued on the sender, so the conversation cannot continue; open a new link.
A peer that closes its link cleanly looks to the other side like one that died: say goodbye
with a ``stop`` message first.

Security. Gloo traffic is neither encrypted nor authenticated: run it over an SSH tunnel or a
VPN between hosts. A hostile peer cannot make this side run code, but one that speaks gloo's
wire protocol directly can end this process (gloo aborts when a message is longer than the
buffer posted for it; the header checks keep honest mismatches from ever getting there) or
send a payload shorter than its header said. For the same reason :data:`HEADER_SIZE` never
changes: a new header format changes :data:`VERSION` only.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from enum import IntEnum
from types import TracebackType
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from dpsnn.errors import ConfigError, TransportError

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "DTYPES",
    "HEADER_SIZE",
    "Header",
    "Link",
    "MAX_DIMS",
    "MessageKind",
    "ROLES",
    "VERSION",
    "check_header",
    "decode_header",
    "encode_header",
    "parse_address",
]

ROLES = ("server", "client")  # rank 0, rank 1
MAGIC = int.from_bytes(b"dpsnn-tl", "big")
VERSION = 1
MAX_DIMS = 8
HEADER_SIZE = 16  # magic, version, kind, step, dtype, ndim, MAX_DIMS dims, 2 spare: never changes
HEADER_TAG, PAYLOAD_TAG = 0, 1
DEFAULT_MAX_ELEMENTS = 1 << 28  # 1 GiB of float32
DEFAULT_TIMEOUT = 30.0

#: The dtypes a link carries; a dtype's code on the wire is its position here plus one.
DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
)
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(DTYPES, start=1)}
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class MessageKind(IntEnum):
    """What a message carries. The numbers are on the wire: new kinds get new numbers, old ones never change."""

    ACTIVATION = 1
    GRADIENT = 2
    LABELS = 3
    WEIGHTS = 4
    CONTROL = 5
    ACK = 6
    STOP = 7
    LOGITS = 8
    IMAGES = 9

    def __str__(self) -> str:
        return repr(self.name.lower())

    @classmethod
    def named(cls, kind: MessageKind | str) -> MessageKind:
        """The kind called ``kind`` (``"activation"`` or ``MessageKind.ACTIVATION``)."""
        if isinstance(kind, MessageKind):
            return kind
        try:
            return cls[str(kind).upper()]
        except KeyError:
            names = ", ".join(member.name.lower() for member in cls)
            raise ConfigError(f"unknown message kind {kind!r}; the kinds are {names}") from None


class Header(NamedTuple):
    """A decoded header: what the peer announces it is sending."""

    kind: MessageKind
    step: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def shape_text(shape: Sequence[int | None]) -> str:
    """A shape as the errors print it: ``(128, 500)``, ``(*, 500)`` where any size is accepted."""
    sizes = ["*" if size is None else str(size) for size in shape]
    return f"({sizes[0]},)" if len(sizes) == 1 else f"({', '.join(sizes)})"


def encode_header(kind: MessageKind | str, step: int, dtype: torch.dtype, shape: Sequence[int]) -> Tensor:
    """The header announcing a tensor of ``dtype`` and ``shape`` as ``kind`` for ``step``."""
    kind = MessageKind.named(kind)
    if dtype not in _DTYPE_CODES:
        carried = ", ".join(dtype_name(known) for known in DTYPES)
        raise ConfigError(f"a link cannot carry {dtype_name(dtype)} tensors; it carries {carried}")
    if len(shape) > MAX_DIMS:
        raise ConfigError(f"a link carries tensors of at most {MAX_DIMS} dims, not {len(shape)}")
    values = [MAGIC, VERSION, int(kind), _checked_step(step), _DTYPE_CODES[dtype], len(shape), *shape]
    return torch.tensor(values + [0] * (HEADER_SIZE - len(values)), dtype=torch.int64)


def decode_header(header: Tensor, peer: str) -> Header:
    """Read a received header; anything that is not a well-formed dpsnn header is refused."""
    values = header.tolist()
    if len(values) != HEADER_SIZE or values[0] != MAGIC:
        raise TransportError(f"the {peer} sent something that is not a dpsnn message (no dpsnn header)")
    if values[1] != VERSION:
        raise TransportError(f"the {peer} speaks transport version {values[1]} and this side version {VERSION}")
    kind_code, step, dtype_code, ndim = values[2:6]
    if kind_code not in MessageKind._value2member_map_:
        raise TransportError(f"the {peer} sent a message of unknown kind (code {kind_code}) for step {step}")
    what = f"{MessageKind(kind_code)} for step {step}"
    if not 1 <= dtype_code <= len(DTYPES):
        raise TransportError(f"the {peer} sent {what} of unknown dtype (code {dtype_code})")
    if not 0 <= ndim <= MAX_DIMS:
        raise TransportError(f"the {peer} sent {what} with {ndim} dims where at most {MAX_DIMS} are allowed")
    shape = tuple(values[6 : 6 + ndim])
    if any(size < 0 for size in shape):
        raise TransportError(f"the {peer} sent {what} of impossible shape {shape_text(shape)}")
    return Header(MessageKind(kind_code), step, DTYPES[dtype_code - 1], shape)


def check_header(
    header: Header,
    peer: str,
    kind: MessageKind | str,
    step: int,
    dtype: torch.dtype | None = None,
    shape: Sequence[int | None] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> None:
    """Refuse ``header`` unless it announces what was expected; ``None`` in ``shape`` accepts any size there."""
    kind = MessageKind.named(kind)
    got = f"{header.kind} for step {header.step}"
    if (header.kind, header.step) != (kind, step):
        raise TransportError(f"the {peer} sent {got} where {kind} for step {step} was expected")
    if dtype is not None and header.dtype != dtype:
        wanted, sent = dtype_name(dtype), dtype_name(header.dtype)
        raise TransportError(f"the {peer} sent {got} as {sent} where {wanted} was expected")
    if shape is not None and not _shape_matches(header.shape, shape):
        raise TransportError(
            f"the {peer} sent {got} of shape {shape_text(header.shape)} where {shape_text(shape)} was expected"
        )
    if header.numel > max_elements:
        raise TransportError(
            f"the {peer} announced {got} of shape {shape_text(header.shape)}: "
            f"{header.numel} elements, more than the {max_elements} allowed"
        )


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"tcp://HOST:PORT"``, ``"[::1]:PORT"`` or ``"env://"`` (``MASTER_ADDR``, ``MASTER_PORT``)."""
    text = address.strip()
    if text == "env://":
        text = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    host, _, port = text.removeprefix("tcp://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:29500")
    return host, int(port)


class Link:
    """One end of a two-party link; make it with :meth:`Link.open`, end it with :meth:`close` (or ``with``).

    Its messages go in lock step, one at a time: a link belongs to one thread.
    """

    def __init__(self, group: dist.ProcessGroupGloo, store: dist.TCPStore, role: str, timeout: float) -> None:
        self.role = role
        self.peer = ROLES[1 - ROLES.index(role)]
        self.timeout = timeout
        self._group: dist.ProcessGroupGloo | None = group
        self._store: dist.TCPStore | None = store  # on the server: the rendezvous, listening until the link ends
        self._peer_rank = 1 - ROLES.index(role)
        self._ended_by: str | None = None

    @classmethod
    def open(
        cls, address: str, role: str, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None
    ) -> Link:
        """Connect the ``role`` (``"server"`` or ``"client"``) to its peer at ``address``.

        The server listens at ``address`` and waits for the client; the client retries until the
        server answers. Both wait at most ``connect_timeout`` seconds (``timeout`` if not given);
        every later send or receive waits at most ``timeout`` seconds.
        """
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
        _check_timeout(timeout)
        connect_timeout = timeout if connect_timeout is None else _check_timeout(connect_timeout)
        host, port = parse_address(address)
        deadline = time.monotonic() + connect_timeout
        store = group = failure = None
        try:
            if role == "server":
                store = dist.TCPStore(host, port, is_master=True, timeout=_left(deadline), wait_for_workers=False)
                # The group gets a connection of its own: a pending gloo operation keeps its group, and its
                # group's store, alive, and the rendezvous must stop listening as soon as the link ends.
                own = dist.TCPStore(_reachable(host), port, is_master=False, timeout=_left(deadline))
                group = _gloo_group(own, 0, None if host in _WILDCARD_HOSTS else host, _left(deadline))
            else:
                interface = _reach_server(host, port, deadline, connect_timeout)
                store = dist.TCPStore(host, port, is_master=False, timeout=_left(deadline))
                group = _gloo_group(store, 1, interface, _left(deadline))
        except RuntimeError as error:
            failure = _connect_failure(error, role, _where(host, port), connect_timeout)
        if failure is not None:  # raised here, out of the except clause: nothing keeps the rendezvous alive
            store = group = None
            raise failure
        return cls(group, store, role, timeout)

    @property
    def closed(self) -> bool:
        return self._group is None

    def send(
        self, kind: MessageKind | str, step: int, tensor: Tensor | None = None, *, timeout: float | None = None
    ) -> None:
        """Send ``tensor`` (nothing: an empty one) as ``kind`` for ``step``; returns once the peer has taken it."""
        kind = MessageKind.named(kind)
        payload = _payload(tensor)
        header = encode_header(kind, step, payload.dtype, payload.shape)
        seconds = self._seconds(timeout)
        doing = f"the {self.role} sent {kind} for step {step}"
        silence = f"the {self.peer} did not take {kind} for step {step} within {seconds:g} s"
        self._transfer("send", header, HEADER_TAG, seconds, doing, silence)
        if payload.numel():
            self._transfer("send", payload, PAYLOAD_TAG, seconds, doing, silence)

    def recv(
        self,
        kind: MessageKind | str,
        step: int,
        *,
        dtype: torch.dtype | None = None,
        shape: Sequence[int | None] | None = None,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        timeout: float | None = None,
    ) -> Tensor:
        """Receive ``kind`` for ``step``, refusing any other message (and its payload) with a TransportError.

        ``dtype`` and ``shape`` are checked where given (``None`` in ``shape``: any size there, so
        ``(None, None)`` only fixes the number of dims); a message of more than ``max_elements``
        elements is refused whatever its shape.
        """
        kind = MessageKind.named(kind)
        seconds = self._seconds(timeout)
        doing = f"the {self.role} waited for {kind} for step {step}"
        silence = f"no message from the {self.peer} within {seconds:g} s (waiting for {kind} for step {step})"
        buffer = torch.zeros(HEADER_SIZE, dtype=torch.int64)
        self._transfer("recv", buffer, HEADER_TAG, seconds, doing, silence)
        try:
            header = decode_header(buffer, self.peer)
            check_header(header, self.peer, kind, step, dtype, shape, max_elements)
        except TransportError as refusal:
            self._end(str(refusal))
            raise
        return self._recv_payload(header, seconds, doing)

    def close(self) -> None:
        """Release the connection and the rendezvous; returns at once even if the peer has gone. Idempotent."""
        self._end("closed by this side")

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"closed: {self._ended_by}" if self.closed else "open"
        return f"Link(role={self.role!r}, timeout={self.timeout:g}, {state})"

    def _recv_payload(self, header: Header, seconds: float, doing: str) -> Tensor:
        wire_dtype = torch.uint8 if header.dtype == torch.bool else header.dtype  # any byte read as a valid bool
        payload = torch.empty(header.shape, dtype=wire_dtype)
        if payload.numel():
            what = f"{header.kind} for step {header.step}"
            silence = f"the {self.peer} sent the header of {what} but not its payload within {seconds:g} s"
            self._transfer("recv", payload, PAYLOAD_TAG, seconds, doing, silence)
        return payload.ne(0) if header.dtype == torch.bool else payload

    def _group_or_fail(self) -> dist.ProcessGroupGloo:
        if self._group is None:
            raise TransportError(f"the link of the {self.role} to the {self.peer} is closed ({self._ended_by})")
        return self._group

    def _seconds(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _check_timeout(timeout)

    def _transfer(self, operation: str, tensor: Tensor, tag: int, seconds: float, doing: str, silence: str) -> None:
        """Send or receive one tensor; a timeout or a lost peer ends the link with a one-line error."""
        group = self._group_or_fail()
        failure = None
        try:
            work = getattr(group, operation)([tensor], self._peer_rank, tag)
            if work.wait(timedelta(seconds=seconds)) is False:
                failure = silence
        except RuntimeError as error:  # gloo raises on waiting, and on posting to a connection already closed
            failure = silence if _is_timeout(error) else self._lost(error, doing)
        group = work = None  # a pending operation holds the group, and the error's traceback would hold both
        if failure is not None:
            self._end(failure)
            raise TransportError(failure)

    def _lost(self, error: RuntimeError, doing: str) -> str:
        reason = _gloo_reason(error)
        if _is_disconnect(reason):
            return f"the {self.peer} closed the connection or died while {doing}"
        return f"the link to the {self.peer} failed while {doing}: {reason}"

    def _end(self, why: str) -> None:
        group, self._group, self._store = self._group, None, None
        if group is not None:
            self._ended_by = why
            with contextlib.suppress(RuntimeError, AttributeError):  # no shutdown() before torch 2.5 or so
                group.shutdown()


def _payload(tensor: Tensor | None) -> Tensor:
    if tensor is None:
        return torch.empty(0, dtype=torch.uint8)
    if tensor.layout != torch.strided:
        raise ConfigError(f"a link carries dense tensors, not {tensor.layout}")
    return tensor.detach().to("cpu").contiguous()


def _shape_matches(shape: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(shape) == len(expected) and all(
        want is None or want == size for size, want in zip(shape, expected, strict=True)
    )


def _checked_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not _INT64[0] <= step <= _INT64[1]:
        raise ConfigError(f"a step is a 64-bit integer, not {step!r}")
    return step


def _check_timeout(seconds: float) -> float:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"a timeout is a positive number of seconds, not {seconds!r}")
    return float(seconds)


def _left(deadline: float) -> timedelta:
    """The time left until ``deadline``, at least a millisecond (a zero timedelta means "the default" to torch)."""
    return timedelta(seconds=max(deadline - time.monotonic(), 0.001))


def _reachable(host: str) -> str:
    """The address at which this host reaches its own rendezvous listening at ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reach_server(host: str, port: int, deadline: float, seconds: float) -> str:
    """Wait until something listens at ``host:port``; return this host's address on the route to it.

    torch's own client retries on a schedule that can overrun its timeout several times over; a
    plain socket keeps the wait within ``seconds``, and names the interface gloo should use.
    """
    while (left := deadline - time.monotonic()) > 0:
        try:
            with socket.create_connection((host, port), timeout=min(left, 1.0)) as probe:
                return probe.getsockname()[0]
        except socket.gaierror as error:
            raise TransportError(f"cannot find the server's host {host!r}: {error.strerror}") from None
        except OSError:
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
    raise TransportError(f"the server at {_where(host, port)} did not answer within {seconds:g} s")


def _gloo_group(store: dist.TCPStore, rank: int, interface: str | None, timeout: timedelta) -> dist.ProcessGroupGloo:
    """A two-rank gloo group on ``store``, outside torch's default process group, bound to ``interface``."""
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    options._threads = 1  # the threads run collectives; point-to-point messages do not use them
    if interface is None:  # a wildcard address: torch's choice (GLOO_SOCKET_IFNAME, else the host name)
        options._devices = [dist.ProcessGroupGloo.create_default_device()]
    else:
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=interface)]
    return dist.ProcessGroupGloo(store, rank, 2, options)


def _connect_failure(error: RuntimeError, role: str, where: str, seconds: float) -> TransportError:
    reason = _gloo_reason(error)
    if "EADDRINUSE" in reason or "address already in use" in reason:
        return TransportError(f"the server cannot listen at {where}: the port is in use")
    if role == "server":
        if _is_timeout(error):
            return TransportError(f"no client connected to {where} within {seconds:g} s")
        return TransportError(f"the server could not open the link at {where}: {reason}")
    if _is_timeout(error):
        return TransportError(f"the server at {where} did not answer within {seconds:g} s")
    if "Ping failed" in reason:
        return TransportError(f"what listens at {where} is not a dpsnn server")
    return TransportError(f"the client could not connect to the server at {where}: {reason}")


def _gloo_reason(error: BaseException) -> str:
    """The first line of a torch/gloo error, without its ``[/path/to/file.cc:123]`` prefix."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". This is typically")[0]


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or ("timeout" in text and "pair closure" not in text)


def _is_disconnect(reason: str) -> bool:
    words = ("closed by peer", "connection reset", "broken pipe", "pair closure", "read error", "write error")
    return any(word in reason.lower() for word in words)
