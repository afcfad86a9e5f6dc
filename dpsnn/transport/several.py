"""One server and several clients, each client in its own process: round-robin split learning and SplitFed.

Each client holds its own data (in a trial on one machine, client ``k`` of ``n`` takes the
``k``-th of ``n`` equal parts of the train split: :meth:`~dpsnn.data.Split.part`) and its own
link to the server, at the server's port plus ``k``. A run goes in rounds, one an epoch:

- ``round-robin`` (split learning with several clients, as Gupta and Raskar describe it): the
  clients take turns. Each trains one pass over its data with the server, starting from the
  client weights the client before it ended with.
- ``splitfed`` (after Thapa et al.): every client starts the round from the same weights and
  they train at once, the server serving their batches in turn (one server part, updated on
  every batch). At the end of the round the client parts are averaged, each weighted by its
  number of images.

The client weights travel through the server, tensor by tensor, as ``weights`` messages (never
pickled: each tensor's dtype and shape are checked against the agreed architecture). So the
server holds every client part it relays: with several clients it can run a white-box attack
on the client part, which a server of one client cannot. A deployment that must keep the
client part from the server needs the clients to pass the weights among themselves, which
dpsnn does not do.

Client 0 leads: at the end of each round it validates the round's weights, tells the server
whether the epoch is the best so far, and after training sends its test split through the
network and answers the server's queries, as the one client of a two-party run does
(:mod:`dpsnn.transport.parties`). Every client ends with the client part of the best epoch.
A run of several clients cannot be resumed: a party that fails ends the run, and the others
exit with one line naming the failure. Example (three terminals, or ``scripts/split.py``)::

    from dpsnn.transport import Link
    from dpsnn.transport.parties import PartyConfig
    from dpsnn.transport.several import RoundsClient, RoundsServer

    config = PartyConfig(clients=2, scheme="splitfed", max_epochs=2)
    links = [Link.open(f"127.0.0.1:{29500 + k}", "server") for k in range(2)]      # terminal 1
    RoundsServer(config, "models/split/server", record="recordings/split").run(links)
    with Link.open("127.0.0.1:29501", "client") as link:                            # terminal 3
        RoundsClient(config, "models/split/client1", splits, index=1).run(link)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dpsnn.errors import ConfigError, TransportError
from dpsnn.transport.link import Link, MessageKind
from dpsnn.transport.parties import (
    CONTROL_SIZE,
    ClientParty,
    Op,
    PartyConfig,
    RunResult,
    ServerParty,
    _control,
    _Exchange,
    _part_state,
)

__all__ = ["RoundsClient", "RoundsServer", "average_weights", "client_address"]

DEFAULT_TURN_TIMEOUT = 3600.0


def client_address(address: str, index: int) -> str:
    """Where client ``index`` meets the server listening at ``address``: the same host, the port plus ``index``."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"bad address {address!r}: expected HOST:PORT (several clients need a port)")
    if int(port) + index > 65535:
        raise ConfigError(f"client {index} would need port {int(port) + index}, past 65535: choose a lower port")
    return f"{host}:{int(port) + index}"


def send_weights(exchange: _Exchange, part: nn.Module) -> None:
    """Every tensor of ``part``'s state, in order, as ``weights`` messages of one step."""
    step = exchange.next()
    for value in part.state_dict().values():
        exchange.link.send(MessageKind.WEIGHTS, step, value.detach().contiguous())


def recv_weights(exchange: _Exchange, part: nn.Module) -> dict[str, Tensor]:
    """The state of ``part``'s architecture from the peer; each tensor must have the dtype and shape of ``part``'s."""
    step = exchange.next()
    return {
        name: exchange.link.recv(MessageKind.WEIGHTS, step, dtype=value.dtype, shape=tuple(value.shape))
        for name, value in part.state_dict().items()
    }


def average_weights(states: Sequence[dict[str, Tensor]], sizes: Sequence[int]) -> dict[str, Tensor]:
    """The states averaged, each weighted by its client's number of images (counters are taken from the first)."""
    if not states or len(states) != len(sizes) or sum(sizes) <= 0:
        raise ConfigError("averaging needs one positive size per state")
    weights = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    averaged = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            stacked = torch.stack([state[name].to(torch.float64) for state in states])
            averaged[name] = torch.tensordot(weights, stacked, dims=1).to(first.dtype)
        else:
            averaged[name] = first.clone()
    return averaged


class RoundsServer(ServerParty):
    """The server of ``config.clients`` clients, one link each, in ``config.scheme``'s rounds.

    It takes :class:`~dpsnn.transport.parties.ServerParty`'s arguments, except ``resume``.
    """

    def __init__(self, config: PartyConfig, state_dir: str | Path, **kwargs: Any) -> None:
        if kwargs.get("resume"):
            raise ConfigError("a run of several clients cannot be resumed: start it afresh")
        super().__init__(config, state_dir, **kwargs)
        self.best_client: dict[str, Tensor] | None = None

    def run(self, links: Sequence[Link]) -> Path:  # type: ignore[override]
        """Serve the whole run; return the path of the final server checkpoint."""
        if len(links) != self.config.clients:
            raise ConfigError(f"{self.config.clients} clients need {self.config.clients} links, not {len(links)}")
        for index, link in enumerate(links):
            link.peer = f"client {index}"  # so that a failure names the client
        exchanges = [_Exchange(link) for link in links]
        batches = [self._hello(exchange, client=index) for index, exchange in enumerate(exchanges)]
        self._schedule_for(sum(batches))  # one server part, stepped on every client's batches
        for epoch in range(self.config.max_epochs):
            if self.config.scheme == "round-robin":
                self._round_robin(exchanges, epoch)
            else:
                self._splitfed(exchanges, epoch)
            self._round_end(exchanges[0], epoch)
        return self._done(exchanges)

    def _turn(self, exchange: _Exchange, op: Op, epoch: int, client: int) -> None:
        """Tell a client what comes next and hand it the client weights the server holds."""
        exchange.link.send(MessageKind.CONTROL, exchange.next(), _control(op, epoch, client))
        send_weights(exchange, self.model.client)

    def _expect(self, exchange: _Exchange, op: Op, epoch: int) -> Tensor:
        """The client's next control message, which must announce ``op`` for ``epoch``."""
        step = exchange.next()
        header = exchange.link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))
        if (int(header[0]), int(header[1])) != (op, epoch):
            raise TransportError(
                f"a client sent control operation {int(header[0])} for epoch {int(header[1])} at step {step} "
                f"where {op.name.lower()} for epoch {epoch} was expected"
            )
        return header

    def _round_robin(self, exchanges: Sequence[_Exchange], epoch: int) -> None:
        self._start_training()
        for client, exchange in enumerate(exchanges):
            self._turn(exchange, Op.TURN, epoch, client)
            batches = int(self._expect(exchange, Op.TRAIN, epoch)[2])
            with self._bar(batches, f"epoch {epoch}, client {client}") as bar:
                for batch in range(batches):
                    self._train_step(exchange, epoch, batch, client)
                    bar.update()
            self.model.client.load_state_dict(recv_weights(exchange, self.model.client))
        self.log(f"epoch {epoch}: {len(exchanges)} clients took their turns")

    def _splitfed(self, exchanges: Sequence[_Exchange], epoch: int) -> None:
        self._start_training()
        for client, exchange in enumerate(exchanges):
            self._turn(exchange, Op.TURN, epoch, client)
        announced = [self._expect(exchange, Op.TRAIN, epoch) for exchange in exchanges]
        batches, images = [int(train[2]) for train in announced], [int(train[3]) for train in announced]
        if min(images) < 1:
            raise TransportError("a client announced a turn without images")
        with self._bar(sum(batches), f"epoch {epoch}, {len(exchanges)} clients at once") as bar:
            for batch in range(max(batches)):
                for client, exchange in enumerate(exchanges):
                    if batch < batches[client]:
                        self._train_step(exchange, epoch, batch, client)
                        bar.update()
        states = [recv_weights(exchange, self.model.client) for exchange in exchanges]
        self.model.client.load_state_dict(average_weights(states, images))
        self.log(f"epoch {epoch}: {len(exchanges)} client parts averaged")

    def _round_end(self, lead: _Exchange, epoch: int) -> None:
        """Client 0 validates the round's weights and ends the epoch, as the one client of two parties does."""
        self._turn(lead, Op.ROUND_END, epoch, 0)
        self._validate(lead, epoch, int(self._expect(lead, Op.VALIDATE, epoch)[2]))
        step = lead.next()
        header = lead.link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))
        if int(header[0]) != Op.EPOCH_END:
            raise TransportError(f"client 0 sent control operation {int(header[0])} where epoch-end was expected")
        is_best = bool(header[2])
        self._epoch_end(lead, step, epoch, is_best)
        if is_best:
            self.best_client = _part_state(self.model.client)

    def _done(self, exchanges: Sequence[_Exchange]) -> Path:
        """Hand every client the best epoch's client part; client 0 then infers and answers the queries."""
        if self.best_client is not None:
            self.model.client.load_state_dict(self.best_client)
        final = self._finish()
        for client, exchange in enumerate(exchanges):
            self._turn(exchange, Op.DONE, self.best_epoch, client)
        lead = exchanges[0]
        while True:
            step = lead.next()
            header = lead.link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))
            if int(header[0]) == Op.INFER:
                self._infer(lead, int(header[1]))
            elif int(header[0]) == Op.QUERIES:
                self._query(lead, step, bool(header[1]))
                break
            else:
                raise TransportError(f"client 0 sent control operation {int(header[0])} after training")
        for exchange in exchanges:
            exchange.link.recv(MessageKind.STOP, exchange.next())
        return final


class RoundsClient(ClientParty):
    """Client ``index`` of ``config.clients``: trains on its turns, and (client 0) validates, infers and is queried.

    It takes :class:`~dpsnn.transport.parties.ClientParty`'s arguments, except ``resume``;
    ``turn_timeout`` is how long it waits for its turn while the others train.
    """

    def __init__(
        self,
        config: PartyConfig,
        state_dir: str | Path,
        splits: Any,
        index: int = 0,
        turn_timeout: float = DEFAULT_TURN_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("resume"):
            raise ConfigError("a run of several clients cannot be resumed: start it afresh")
        if not 0 <= index < config.clients:
            raise ConfigError(
                f"--client {index} is not one of the {config.clients} clients (0 to {config.clients - 1})"
            )
        super().__init__(config, state_dir, splits, **kwargs)
        self.index = index
        self.turn_timeout = turn_timeout

    @property
    def lead(self) -> bool:
        return self.index == 0

    def run(self, link: Link) -> RunResult | None:
        """Take part in the whole run; client 0 returns its view of it (the others None)."""
        exchange = _Exchange(link)
        self._hello(exchange)
        turns = 0
        while True:
            step = exchange.next()
            header = link.recv(
                MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,), timeout=self.turn_timeout
            )
            op, epoch = int(header[0]), int(header[1])
            self.part.load_state_dict(recv_weights(exchange, self.part))
            if op == Op.TURN:
                self._train(exchange, epoch)
                send_weights(exchange, self.part)
                turns += 1
            elif op == Op.ROUND_END and self.lead:
                self._end_epoch(exchange, epoch, time.monotonic())
            elif op == Op.DONE:
                return self._done(exchange, epoch, turns)
            else:
                raise TransportError(f"the server sent control operation {op} to client {self.index} at step {step}")

    def _done(self, exchange: _Exchange, best_epoch: int, turns: int) -> RunResult | None:
        self.best_epoch, self.best_state = best_epoch, _part_state(self.part)
        self._finish()
        self.log(f"client {self.index}: {turns} turns trained; kept the client part of epoch {best_epoch}")
        if not self.lead:
            exchange.link.send(MessageKind.STOP, exchange.next())
            return None
        test = self._infer(exchange)
        answered = self._answer_queries(exchange)
        exchange.link.send(MessageKind.STOP, exchange.next())
        return self._result(test, answered)
