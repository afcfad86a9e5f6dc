"""The client and the server of a split network, each in its own process, trained over a :class:`Link`.

The client owns the data, the client part and the wire defences: it adds the noise before
sending, so the server never receives the clean ``h``. The server owns the server part and,
in this vanilla split, the labels the client sends with each batch. One training step is
three messages: the client sends what crosses the wire (``activation``) and the batch's
``labels``; the server answers with the gradient of the loss with respect to what it
received. The server records everything it receives (:mod:`dpsnn.transport.recording`).
In the U-shaped split (``PartyConfig(ushaped=True)``) the labels and the server part's last
layer stay with the client (:func:`party_parts`) and a step is four messages: the activation,
the server's output back, the gradient of the client's loss with respect to that output, and
the gradient with respect to the activation back.

A run is a conversation the client leads, in phases announced by ``control`` messages:
``hello`` (the two check that they were started with the same training flags and agree on
the epoch to start from), per epoch ``train`` and ``validate`` (the client sends its val
batches and gets the logits back: the accuracy is the client's to compute) and
``epoch-end`` (the server writes its recording and checkpoint, then acknowledges with its
training loss and accuracy; the client checkpoints after the acknowledgement), then
``finish`` (both keep the weights of the best epoch by the client's val accuracy),
``infer`` (the client's test split through the trained network, as its users' queries would
be) and ``queries`` (the server sends images of its own auxiliary data and the client
answers with what it would send for them: the pairs an inversion attack trains on).

Each side writes ``last.ckpt`` in its state folder after every acknowledged epoch (the
server keeps the one before as ``previous.ckpt``), so both resume with ``resume=True``
from the last epoch both finished; the epoch under way when a party died is done again
and re-recorded. Example (two terminals, or see ``scripts/split.py``)::

    from dpsnn.transport import Link
    from dpsnn.transport.parties import ClientParty, PartyConfig, ServerParty

    config = PartyConfig(defences=("laplace:scale=0.5",), max_epochs=2)
    with Link.open("127.0.0.1:29500", "server") as link:              # terminal 1
        ServerParty(config, "models/split/server", record="recordings/split").run(link)
    with Link.open("127.0.0.1:29500", "client") as link:              # terminal 2
        result = ClientParty(config, "models/split/client", splits).run(link)

What is hand-written, and why: the training loop. Lightning's loop assumes that one process
holds the data, the model and the loss; here a step is cut in two by a message exchange,
and the server's batches arrive from the link. Everything else (the defences, the
architectures, Adam and the one-cycle schedule, dCor) is the library's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dpsnn.architectures import intermediate_shape
from dpsnn.checkpoints import read_checkpoint
from dpsnn.data import Split, Splits
from dpsnn.defences import Defence, canonical, check, defence_from
from dpsnn.errors import CheckpointError, ConfigError, TrainingDiverged, TransportError
from dpsnn.files import atomic_path
from dpsnn.metrics import DCOR_BATCH_SIZE, mean_and_se, per_batch_dcor
from dpsnn.models import SplitNN
from dpsnn.transport.link import Link, MessageKind
from dpsnn.transport.recording import RecordingWriter

__all__ = [
    "ClientParty",
    "PartyConfig",
    "RunResult",
    "ServerParty",
    "join_parties",
    "party_parts",
    "two_party_defences",
]

PROTOCOL = 1
CONTROL_SIZE = 8
ACK_SIZE = 4
PARTY_KIND = "split-party"
PARTY_FORMAT = 1
MAX_BATCH = 1 << 16  # the most rows one message may carry
MAX_CONFIG_BYTES = 1 << 14
QUERY_BATCH = 500
#: How several clients train together (dpsnn.transport.several): taking turns, or at once and averaged.
SCHEMES = ("round-robin", "splitfed")


class Op(IntEnum):
    """What a control message announces. The numbers are on the wire."""

    HELLO = 1
    TRAIN = 2
    VALIDATE = 3
    EPOCH_END = 4
    FINISH = 5
    INFER = 6
    QUERIES = 7
    # sent by the server to several clients (dpsnn.transport.several)
    TURN = 8
    ROUND_END = 9
    DONE = 10


def two_party_defences(defences: Iterable[Defence | str]) -> tuple[Defence, ...]:
    """``defences`` checked for a two-party run, or a :class:`ConfigError` naming the one that cannot run there.

    Across two parties a defence can act on the wire (the client adds it before sending) or
    add a loss term computed from the input and the client's output (NoPeek). A defence
    that wraps the optimiser and the data (DP-SGD) or steps a schedule through Lightning
    callbacks (suppress-privacy pruning) needs the single-process trainer.
    """
    specs = check([defence_from(d) for d in defences])
    for spec in specs:
        if spec.is_identity():
            continue
        wire = spec.wire()
        learned = hasattr(wire, "build") or spec.companion() is not None
        if type(spec).wrap is not Defence.wrap or spec.callbacks() or learned or spec.needs_logits():
            raise ConfigError(
                f"defence '{spec.label()}' needs the single-process trainer (train_model.py): across two parties "
                "dpsnn runs fixed wire defences and client loss terms of the input, the client's output and the "
                "labels (laplace, nopeek, class-collapse without smoothing)"
            )
    return specs


@dataclass(frozen=True)
class PartyConfig:
    """What both parties must agree on; each is started with the same training flags.

    ``batch_size`` and the split sizes are the client's business (the server is told how
    many batches an epoch has), so they are not compared.
    """

    architecture: str = "reference"
    dataset: str = "fashion-mnist"
    defences: tuple[Defence | str, ...] = ()
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    max_epochs: int = 10
    seed: int = 0
    num_classes: int = 10
    input_shape: tuple[int, ...] = (1, 28, 28)
    batch_size: int = 128
    clients: int = 1
    scheme: str = "round-robin"
    ushaped: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defences", two_party_defences(self.defences))
        object.__setattr__(self, "input_shape", tuple(int(size) for size in self.input_shape))
        if self.clients < 1:
            raise ConfigError(f"a run has at least one client, not {self.clients}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {self.scheme!r}; the schemes are {', '.join(SCHEMES)}")
        if self.ushaped and self.clients > 1:
            raise ConfigError("the U-shaped split runs with one client; several clients use the vanilla split")

    def agreed(self) -> dict[str, str]:
        """The fields both parties must have equal, as text."""
        return (
            {
                "protocol": str(PROTOCOL),
                "architecture": self.architecture,
                "dataset": self.dataset,
                "defences": canonical(self.defences),
                "learning_rate": repr(float(self.learning_rate)),
                "lr_schedule": self.lr_schedule,
                "max_epochs": str(self.max_epochs),
                "seed": str(self.seed),
                "num_classes": str(self.num_classes),
                "input_shape": ",".join(map(str, self.input_shape)),
            }
            | ({"clients": str(self.clients), "scheme": self.scheme} if self.clients > 1 else {})
            | ({"ushaped": "1"} if self.ushaped else {})
        )

    def text(self) -> str:
        return "\n".join(f"{key}={value}" for key, value in self.agreed().items())

    def fingerprint(self) -> int:
        """A 63-bit digest of :meth:`text`, sent first so that a mismatch is seen at once."""
        return int.from_bytes(hashlib.sha256(self.text().encode()).digest()[:8], "big") >> 1

    def build(self) -> SplitNN:
        """The whole split network as the single-process trainer builds it for this seed (same initial weights)."""
        L.seed_everything(self.seed, verbose=False)
        return SplitNN(
            architecture=self.architecture,
            defences=self.defences,
            learning_rate=self.learning_rate,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            lr_schedule=self.lr_schedule,
            dataset=self.dataset,
            seed=self.seed,
            **self.metadata,
        )


def party_parts(model: SplitNN, ushaped: bool) -> tuple[nn.Module, nn.Module]:
    """What the client and the server train: ``model.client`` and ``model.server``, or in the U-shaped split the
    client part with the server part's last layer (the head, and with it the labels) and the server part without it.

    The parts share their modules with ``model``: training them trains it.
    """
    if not ushaped:
        return model.client, model.server
    layers = list(model.server.children()) if isinstance(model.server, nn.Sequential) else []
    if len(layers) < 2:
        raise ConfigError("the U-shaped split needs a server part that is a sequence of at least two layers")
    return nn.ModuleList([model.client, layers[-1]]), nn.Sequential(*layers[:-1])


def config_differences(mine: str, theirs: str) -> list[str]:
    """The agreed fields that differ between two :meth:`PartyConfig.text` texts: ``["seed: 0 here, 1 there"]``."""

    def fields(text: str) -> dict[str, str]:
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    here, there = fields(mine), fields(theirs)
    return [
        f"{key}: {here.get(key, '(none)')} here, {there.get(key, '(none)')} there"
        for key in sorted(set(here) | set(there))
        if here.get(key) != there.get(key)
    ]


@dataclass
class EpochReport:
    """One epoch as the client saw it: val accuracy and dCor (with SEs), and the server's training figures."""

    epoch: int
    val_accuracy: float
    val_accuracy_se: float
    val_dcor: float
    val_dcor_se: float
    train_loss: float
    train_accuracy: float
    seconds: float


@dataclass
class RunResult:
    """What the client knows at the end: the best epoch, its val figures, every epoch's report."""

    best_epoch: int
    n_val: int
    val_accuracy: float
    val_accuracy_se: float
    val_dcor: float
    val_dcor_se: float
    epochs: list[EpochReport]
    test_accuracy: float | None = None
    test_accuracy_se: float | None = None
    n_test: int = 0
    queries_answered: int = 0


def _control(*values: int) -> Tensor:
    if len(values) > CONTROL_SIZE:
        raise ValueError(f"a control message holds at most {CONTROL_SIZE} numbers")
    return torch.tensor([*values, *[0] * (CONTROL_SIZE - len(values))], dtype=torch.int64)


def _ack(*values: float) -> Tensor:
    return torch.tensor([*values, *[0.0] * (ACK_SIZE - len(values))], dtype=torch.float64)


def _text_tensor(text: str) -> Tensor:
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def _tensor_text(tensor: Tensor) -> str:
    return bytes(tensor.tolist()).decode(errors="replace")


class _Exchange:
    """The link, and the step counter both sides advance in the same order (every header names its step)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.step = 0

    def next(self) -> int:
        self.step += 1
        return self.step


# -- state files ----------------------------------------------------------------------------------------------------


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as partial:
        torch.save({"dpsnn": {"kind": PARTY_KIND, "format_version": PARTY_FORMAT}, **payload}, partial)


def _read_state(path: Path) -> dict[str, Any]:
    payload = read_checkpoint(path, PARTY_KIND)
    needed = {"role", "epoch", "hyper_parameters", "state_dict"}
    if not needed <= set(payload):
        raise CheckpointError(f"{path} is not a complete split-party checkpoint")
    return payload


def _part_state(part: nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().cpu().clone() for name, value in part.state_dict().items()}


class _Party:
    """What both parties share: the model of the agreed config, its part, the optimiser, the state folder."""

    role = ""

    def __init__(self, config: PartyConfig, state_dir: str | Path, progress: bool = True) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.progress = progress
        self.model = config.build()
        self.part: nn.Module = party_parts(self.model, config.ushaped)[0 if self.role == "client" else 1]
        self.optimizer = torch.optim.Adam(self.part.parameters(), lr=config.learning_rate)
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None
        self.epoch = 0  # epochs finished
        self.best_epoch = -1
        self.best_accuracy = -math.inf
        self.best_state: dict[str, Tensor] | None = None

    @property
    def last_path(self) -> Path:
        return self.state_dir / "last.ckpt"

    @property
    def final_path(self) -> Path:
        return self.state_dir / "final.ckpt"

    def _schedule_for(self, batches_per_epoch: int) -> None:
        if self.config.lr_schedule == "one-cycle":
            total = max(1, self.config.max_epochs * batches_per_epoch)
            self.schedule = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.config.learning_rate, total_steps=total
            )

    def _optimise(self) -> None:
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()

    def _state(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "epoch": self.epoch,
            "hyper_parameters": dict(self.model.hparams),
            "state_dict": _part_state(self.part),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else {},
            "best": {"epoch": self.best_epoch, "accuracy": self.best_accuracy, "state_dict": self.best_state or {}},
            "rng": torch.get_rng_state(),
            "agreed": self.config.text(),
        }

    def _load_state(self, path: Path, payload: dict[str, Any]) -> None:
        """Take up the state ``payload`` read from ``path`` (by :func:`_read_state`)."""
        if payload["role"] != self.role:
            raise CheckpointError(f"{path} is the {payload['role']}'s checkpoint, not the {self.role}'s")
        if payload.get("agreed") != self.config.text():
            differences = "; ".join(config_differences(self.config.text(), str(payload.get("agreed", ""))))
            raise CheckpointError(f"{path} was written by a run with other training flags ({differences})")
        self.part.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.schedule is not None and payload["schedule"]:
            self.schedule.load_state_dict(payload["schedule"])
        best = payload["best"]
        self.best_epoch, self.best_accuracy = int(best["epoch"]), float(best["accuracy"])
        self.best_state = dict(best["state_dict"]) or None
        torch.set_rng_state(payload["rng"])
        self.epoch = int(payload["epoch"])

    def _checkpoint(self) -> None:
        _save_state(self.last_path, self._state())

    def _keep_best(self, is_best: bool, accuracy: float, epoch: int) -> None:
        if is_best:
            self.best_epoch, self.best_accuracy, self.best_state = epoch, accuracy, _part_state(self.part)

    def _finish(self) -> Path:
        """Load the best epoch's weights and write them as ``final.ckpt``."""
        if self.best_state is not None:
            self.part.load_state_dict(self.best_state)
        self.part.eval()
        payload = self._state() | {"epoch": self.best_epoch}
        _save_state(self.final_path, payload)
        return self.final_path

    def _bar(self, total: int, description: str) -> Any:
        return tqdm(total=total, desc=description, disable=not self.progress, leave=False, dynamic_ncols=True)


# -- the client -----------------------------------------------------------------------------------------------------


class ClientParty(_Party):
    """The data holder: trains the client part on its ``splits`` through the server at the other end of a link.

    ``infer`` test images (default: all of the test split; 0 for none) go through the trained
    network after training; ``answer_queries`` says whether the server's queries of its own
    images are answered (a deployed client part answers whoever queries it).
    """

    role = "client"

    def __init__(
        self,
        config: PartyConfig,
        state_dir: str | Path,
        splits: Splits,
        resume: bool = False,
        infer: int | None = None,
        answer_queries: bool = True,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(config, state_dir, progress)
        splits.train.require("target train")
        splits.val.require("target val")
        self.splits = splits
        self.infer = len(splits.test) if infer is None else min(infer, len(splits.test))
        self.answer_queries = answer_queries
        self.log = log
        self.index = 0  # which of several clients this is
        self._sums = torch.zeros(3, dtype=torch.float64)  # U-shaped: the client's loss sum, correct, examples
        self.middle_shape = _middle_shape(self.model, config) if config.ushaped else ()
        self.batches = math.ceil(len(splits.train) / config.batch_size)
        self._schedule_for(self.batches)
        self.reports: list[EpochReport] = []
        self.best_correct: Tensor | None = None
        self.best_dcor: Tensor | None = None
        if resume and self.last_path.is_file():
            self._load_state(self.last_path, _read_state(self.last_path))
            log(f"resuming after epoch {self.epoch - 1} from {self.last_path}")
        elif resume:
            log(f"no checkpoint in {self.state_dir}/ to resume from: starting at epoch 0")

    def _state(self) -> dict[str, Any]:
        reports = [dataclasses.asdict(report) for report in self.reports]
        best = {"correct": self.best_correct, "dcor": self.best_dcor} if self.best_correct is not None else {}
        return super()._state() | {"reports": reports, "best_measures": best}

    def _load_state(self, path: Path, payload: dict[str, Any]) -> None:
        super()._load_state(path, payload)
        self.reports = [EpochReport(**report) for report in payload.get("reports", [])]
        best = payload.get("best_measures") or {}
        self.best_correct, self.best_dcor = best.get("correct"), best.get("dcor")

    def run(self, link: Link) -> RunResult:
        """Train, validate, checkpoint every epoch, then infer and answer queries; the client's view of the run."""
        exchange = _Exchange(link)
        self._hello(exchange)
        for epoch in range(self.epoch, self.config.max_epochs):
            self._epoch(exchange, epoch)
        self._finish_run(exchange)
        test = self._infer(exchange)
        answered = self._answer_queries(exchange)
        link.send(MessageKind.STOP, exchange.next())
        return self._result(test, answered)

    def _hello(self, exchange: _Exchange) -> None:
        step = exchange.next()
        text = self.config.text()
        exchange.link.send(
            MessageKind.CONTROL,
            step,
            _control(Op.HELLO, PROTOCOL, self.config.fingerprint(), self.epoch, self.batches, self.index),
        )
        exchange.link.send(MessageKind.CONTROL, step, _text_tensor(text))
        answer = exchange.link.recv(MessageKind.ACK, step, dtype=torch.float64, shape=(ACK_SIZE,))
        if answer[0] != 1:
            their = exchange.link.recv(MessageKind.CONTROL, step, dtype=torch.uint8, shape=(None,))
            raise ConfigError(self._refusal(int(answer[1]), _tensor_text(their)))

    def _refusal(self, reason: int, their_text: str) -> str:
        if reason == 1:
            differences = "; ".join(config_differences(self.config.text(), their_text))
            return f"the server was started with other training flags ({differences}); give both the same flags"
        if reason == 2:
            return (
                f"the server cannot resume after epoch {self.epoch - 1}: start it with --resume and its own state "
                "folder, or start both afresh"
            )
        if reason == 3:
            return f"the server refused this client: {their_text}"
        return f"the server refused to start a run after epoch {self.epoch - 1} (its reason: {their_text})"

    def _epoch(self, exchange: _Exchange, epoch: int) -> None:
        started = time.monotonic()
        self._train(exchange, epoch)
        self._end_epoch(exchange, epoch, started)

    def _end_epoch(self, exchange: _Exchange, epoch: int, started: float) -> None:
        """Validate, tell the server whether the epoch is the best so far, checkpoint on its acknowledgement."""
        correct, dcor = self._validate(exchange, epoch)
        accuracy, accuracy_se = mean_and_se(correct)
        is_best = accuracy > self.best_accuracy
        step = exchange.next()
        exchange.link.send(MessageKind.CONTROL, step, _control(Op.EPOCH_END, epoch, int(is_best)))
        ack = exchange.link.recv(MessageKind.ACK, step, dtype=torch.float64, shape=(ACK_SIZE,))
        self._keep_best(is_best, accuracy, epoch)
        if is_best:
            self.best_correct, self.best_dcor = correct, dcor
        dcor_mean, dcor_se = mean_and_se(dcor)
        train_loss, train_accuracy = float(ack[1]), float(ack[2])
        if self.config.ushaped:  # the server has no labels: the training figures are the client's
            loss_sum, right, count = self._sums.tolist()
            train_loss, train_accuracy = loss_sum / max(count, 1), right / max(count, 1)
        report = EpochReport(
            epoch, accuracy, accuracy_se, dcor_mean, dcor_se, train_loss, train_accuracy, time.monotonic() - started
        )
        self.reports.append(report)
        self.epoch = epoch + 1
        self._checkpoint()
        whose = "train" if self.config.ushaped else "server's train"
        self.log(
            f"epoch {epoch}: val accuracy {accuracy:.4f} ± {accuracy_se:.4f}, dCor {dcor_mean:.3f}; "
            f"{whose} loss {report.train_loss:.4f}, accuracy {report.train_accuracy:.4f} "
            f"({report.seconds:.0f} s)"
        )

    def _epoch_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Epoch ``epoch``'s batches in the order the single-process trainer draws them for this seed."""
        generator = torch.Generator().manual_seed(self.config.seed)
        # torch's RandomSampler draws two permutations an epoch (the second for a remainder it leaves empty).
        for _ in range(2 * epoch):
            torch.randperm(len(self.splits.train), generator=generator)
        order = torch.randperm(len(self.splits.train), generator=generator)
        train = self.splits.train
        for index in order.split(self.config.batch_size):
            yield train.images[index], train.labels[index]

    def _train(self, exchange: _Exchange, epoch: int) -> None:
        link = exchange.link
        announce = _control(Op.TRAIN, epoch, self.batches, len(self.splits.train))
        link.send(MessageKind.CONTROL, exchange.next(), announce)
        _draw_like_a_data_loader()
        self.model.train()
        self._sums.zero_()
        with self._bar(self.batches, f"epoch {epoch} train") as bar:
            for x, y in self._epoch_batches(epoch):
                step = exchange.next()
                h = self.model.client(x)
                sent = self.model.wire(h)
                terms = [term for d in self.config.defences for term in d.loss_terms(x, h, None, y).values()]
                link.send(MessageKind.ACTIVATION, step, sent.detach().contiguous())
                self.optimizer.zero_grad()
                if self.config.ushaped:
                    self._head_step(link, step, y)
                else:
                    link.send(MessageKind.LABELS, step, y)
                gradient = link.recv(MessageKind.GRADIENT, step, dtype=sent.dtype, shape=tuple(sent.shape))
                outputs, grads = [sent], [gradient]
                if terms:
                    outputs.append(torch.stack(terms).sum())
                    grads.append(None)
                torch.autograd.backward(outputs, grads)
                self._optimise()
                bar.update()

    def _head_step(self, link: Link, step: int, y: Tensor) -> None:
        """The U-shaped split's middle of a step: the server's output in, the loss on the head, its gradient out."""
        middle = link.recv(MessageKind.ACTIVATION, step, dtype=torch.float32, shape=(len(y), *self.middle_shape))
        middle.requires_grad_(True)
        logits = self.part[1](middle)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the client's loss became {loss.item()} at step {step}")
        loss.backward()
        link.send(MessageKind.GRADIENT, step, middle.grad.contiguous())
        self._sums += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)])

    @torch.no_grad()
    def _validate(self, exchange: _Exchange, epoch: int) -> tuple[Tensor, Tensor]:
        val = self.splits.val
        batches = list(zip(val.images.split(DCOR_BATCH_SIZE), val.labels.split(DCOR_BATCH_SIZE), strict=True))
        exchange.link.send(MessageKind.CONTROL, exchange.next(), _control(Op.VALIDATE, epoch, len(batches)))
        _draw_like_a_data_loader()
        self.model.eval()
        correct, dcor, seen = [], [], []
        with self._bar(len(batches), f"epoch {epoch} val") as bar:
            for x, y in batches:
                logits, sent = self._query_server(exchange, x)
                correct.append((logits.argmax(dim=1) == y).float())
                seen.append(sent)
                bar.update()
        dcor = per_batch_dcor(val.images, torch.cat(seen))
        return torch.cat(correct), dcor

    def _query_server(self, exchange: _Exchange, x: Tensor) -> tuple[Tensor, Tensor]:
        step = exchange.next()
        sent = self.model.encode(x).contiguous()
        exchange.link.send(MessageKind.ACTIVATION, step, sent)
        if self.config.ushaped:  # the server's output; the head, and so the class, are the client's
            middle = exchange.link.recv(
                MessageKind.ACTIVATION, step, dtype=torch.float32, shape=(len(x), *self.middle_shape)
            )
            return self.part[1](middle), sent
        logits = exchange.link.recv(
            MessageKind.LOGITS, step, dtype=torch.float32, shape=(len(x), self.config.num_classes)
        )
        return logits, sent

    def _finish_run(self, exchange: _Exchange) -> None:
        step = exchange.next()
        exchange.link.send(MessageKind.CONTROL, step, _control(Op.FINISH, self.best_epoch))
        exchange.link.recv(MessageKind.ACK, step, dtype=torch.float64, shape=(ACK_SIZE,))
        self._finish()

    @torch.no_grad()
    def _infer(self, exchange: _Exchange) -> Tensor | None:
        if self.infer == 0:
            exchange.link.send(MessageKind.CONTROL, exchange.next(), _control(Op.INFER, 0))
            return None
        test = self.splits.test.subset(self.infer)
        batches = list(zip(test.images.split(DCOR_BATCH_SIZE), test.labels.split(DCOR_BATCH_SIZE), strict=True))
        exchange.link.send(MessageKind.CONTROL, exchange.next(), _control(Op.INFER, len(batches)))
        self.model.eval()
        correct = []
        with self._bar(len(batches), "inference") as bar:
            for x, y in batches:
                logits, _ = self._query_server(exchange, x)
                correct.append((logits.argmax(dim=1) == y).float())
                bar.update()
        step = exchange.next()
        exchange.link.recv(MessageKind.ACK, step, dtype=torch.float64, shape=(ACK_SIZE,))
        return torch.cat(correct)

    @torch.no_grad()
    def _answer_queries(self, exchange: _Exchange) -> int:
        link = exchange.link
        step = exchange.next()
        link.send(MessageKind.CONTROL, step, _control(Op.QUERIES, int(self.answer_queries)))
        count = int(link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))[1])
        if count and not self.answer_queries:
            raise TransportError("the server sent queries although this client refused them")
        self.model.eval()
        answered = 0
        shape = (None, *self.config.input_shape)
        with self._bar(count, "answering the server's queries") as bar:
            for _ in range(count):
                step = exchange.next()
                images = _recv_rows(link, MessageKind.IMAGES, step, shape)
                link.send(MessageKind.ACTIVATION, step, self.model.encode(images).contiguous())
                answered += len(images)
                bar.update()
        return answered

    def _result(self, test: Tensor | None, answered: int) -> RunResult:
        if self.best_correct is None or self.best_dcor is None:
            raise CheckpointError(f"{self.last_path} holds no validation of the best epoch: start the run afresh")
        accuracy, accuracy_se = mean_and_se(self.best_correct)
        dcor, dcor_se = mean_and_se(self.best_dcor)
        result = RunResult(self.best_epoch, len(self.best_correct), accuracy, accuracy_se, dcor, dcor_se, self.reports)
        if test is not None:
            result.test_accuracy, result.test_accuracy_se = mean_and_se(test)
            result.n_test = len(test)
        result.queries_answered = answered
        return result


def _middle_shape(model: SplitNN, config: PartyConfig) -> tuple[int, ...]:
    """The shape of one row of the U-shaped server's output: what its head, on the client, takes."""
    return intermediate_shape(nn.Sequential(model.client, party_parts(model, True)[1]), config.input_shape)


def _draw_like_a_data_loader() -> None:
    """Take the one number from torch's global generator that a DataLoader takes when it starts an epoch.

    The single-process trainer starts a DataLoader for every epoch's training and validation;
    drawing what it draws keeps the wire's noise the same for the same seed in both modes.
    """
    torch.empty((), dtype=torch.int64).random_()


def _cap(shape: Sequence[int | None]) -> int:
    """The most elements a message of rows of ``shape`` may have: :data:`MAX_BATCH` rows."""
    return MAX_BATCH * math.prod(size for size in shape[1:] if size is not None)


def _recv_rows(link: Link, kind: MessageKind, step: int, shape: Sequence[int | None]) -> Tensor:
    """A float32 batch of rows of ``shape`` (any number of rows, up to :data:`MAX_BATCH`)."""
    return link.recv(kind, step, dtype=torch.float32, shape=shape, max_elements=_cap(shape))


# -- the server -----------------------------------------------------------------------------------------------------


class ServerParty(_Party):
    """The computation party: trains the server part on what the client sends, and records all of it.

    ``record`` is the folder of the recording (None: nothing is recorded); ``queries`` are
    the server's own auxiliary images (a :class:`~dpsnn.data.Split`) sent through the
    client after training, their answers recorded beside them.
    """

    role = "server"

    def __init__(
        self,
        config: PartyConfig,
        state_dir: str | Path,
        record: str | Path | None = None,
        queries: Split | None = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        record_metadata: dict[str, object] | None = None,
    ) -> None:
        super().__init__(config, state_dir, progress)
        self.queries = queries
        self.resume = resume
        self.log = log
        self.intermediate_shape = intermediate_shape(self.model.client, config.input_shape)
        metadata = {**config.agreed(), "wire": canonical(self.model.wire_defences), **(record_metadata or {})}
        self.recorder = RecordingWriter(record, metadata) if record is not None else None
        self._sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, examples of the epoch

    def run(self, link: Link) -> Path:
        """Serve one client's run to its end; return the path of the final server checkpoint."""
        exchange = _Exchange(link)
        self._hello(exchange)
        final = None
        while True:
            step = exchange.next()
            header = link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))
            op = int(header[0])
            if op == Op.TRAIN:
                self._train(exchange, int(header[1]), int(header[2]))
            elif op == Op.VALIDATE:
                self._validate(exchange, int(header[1]), int(header[2]))
            elif op == Op.EPOCH_END:
                self._epoch_end(exchange, step, int(header[1]), bool(header[2]))
            elif op == Op.FINISH:
                final = self._finish_run(exchange, step)
            elif op == Op.INFER:
                self._infer(exchange, int(header[1]))
            elif op == Op.QUERIES:
                self._query(exchange, step, bool(header[1]))
                link.recv(MessageKind.STOP, exchange.next())
                break
            else:
                raise TransportError(f"the client sent an unknown control operation {op} at step {step}")
        if final is None:
            raise TransportError("the client ended the run before finishing training")
        return final

    def _hello(self, exchange: _Exchange, client: int = 0) -> int:
        """Check the client's flags (and, of several, that it is client ``client``); return its batches an epoch."""
        link = exchange.link
        step = exchange.next()
        hello = link.recv(MessageKind.CONTROL, step, dtype=torch.int64, shape=(CONTROL_SIZE,))
        text = _tensor_text(
            link.recv(MessageKind.CONTROL, step, dtype=torch.uint8, shape=(None,), max_elements=MAX_CONFIG_BYTES)
        )
        if int(hello[0]) != Op.HELLO or int(hello[1]) != PROTOCOL:
            raise TransportError(f"the client speaks another protocol ({int(hello[1])}; this server speaks {PROTOCOL})")
        if int(hello[2]) != self.config.fingerprint():
            link.send(MessageKind.ACK, step, _ack(0, 1))
            link.send(MessageKind.CONTROL, step, _text_tensor(self.config.text()))
            differences = "; ".join(config_differences(self.config.text(), text))
            raise ConfigError(f"the client was started with other training flags ({differences})")
        start, batches = int(hello[3]), int(hello[4])
        if int(hello[5]) != client:
            problem = f"client {int(hello[5])} connected where client {client} was expected: check its --client"
            link.send(MessageKind.ACK, step, _ack(0, 3))
            link.send(MessageKind.CONTROL, step, _text_tensor(problem))
            raise ConfigError(problem)
        self._schedule_for(batches)
        problem = self._start_at(start)
        if problem:
            link.send(MessageKind.ACK, step, _ack(0, 2))
            link.send(MessageKind.CONTROL, step, _text_tensor(problem))
            raise CheckpointError(problem)
        link.send(MessageKind.ACK, step, _ack(1, start))
        return batches

    def _start_at(self, start: int) -> str:
        """Load the state after epoch ``start - 1`` (a fresh model for 0); the problem as text, or ""."""
        if start == 0:
            if self.recorder is not None:
                self.recorder.clear()
            return ""
        if not self.resume:
            return f"the client resumes after epoch {start - 1} but this server was started without --resume"
        for path in (self.last_path, self.state_dir / "previous.ckpt"):
            payload = _read_state(path) if path.is_file() else None
            if payload is not None and int(payload["epoch"]) == start:
                self._load_state(path, payload)
                if self.recorder is not None:
                    self.recorder.clear(from_epoch=start)
                self.log(f"resuming after epoch {start - 1} from {path}")
                return ""
        return f"this server has no checkpoint after epoch {start - 1} in {self.state_dir}/"

    def _train(self, exchange: _Exchange, epoch: int, batches: int) -> None:
        self._start_training()
        with self._bar(batches, f"epoch {epoch} train") as bar:
            for batch in range(batches):
                self._train_step(exchange, epoch, batch)
                bar.update()

    def _start_training(self) -> None:
        self.part.train()
        self._sums.zero_()

    def _train_step(self, exchange: _Exchange, epoch: int, batch: int, client: int | None = None) -> None:
        """One training step of the client at the other end of ``exchange``: its batch in, the gradient back."""
        link = exchange.link
        step = exchange.next()
        received = _recv_rows(link, MessageKind.ACTIVATION, step, (None, *self.intermediate_shape))
        seen = received.clone().requires_grad_(True)
        rows = {"activation": received, "batch": torch.full((len(received),), batch)}
        self.optimizer.zero_grad()
        if self.config.ushaped:
            rows["gradient"] = self._body_step(link, step, seen)
        else:
            rows["labels"] = self._head_loss(link, step, seen, epoch, batch)
        link.send(MessageKind.GRADIENT, step, seen.grad.contiguous())
        self._optimise()
        if self.recorder is not None:
            if client is not None:
                rows["client"] = torch.full((len(received),), client)
            self.recorder.add("train", epoch, **rows)

    def _head_loss(self, link: Link, step: int, seen: Tensor, epoch: int, batch: int) -> Tensor:
        """The vanilla split: the labels in, the loss on the server part, backward; return the labels."""
        labels = link.recv(MessageKind.LABELS, step, dtype=torch.int64, shape=(len(seen),))
        self._check_labels(labels, step)
        logits = self.part(seen)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the server's loss became {loss.item()} at epoch {epoch}, batch {batch}")
        loss.backward()
        self._sums += torch.tensor([loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(), len(labels)])
        return labels

    def _body_step(self, link: Link, step: int, seen: Tensor) -> Tensor:
        """The U-shaped split: the output out to the client's head, its gradient in, backward; return that gradient."""
        output = self.part(seen)
        link.send(MessageKind.ACTIVATION, step, output.detach().contiguous())
        gradient = link.recv(MessageKind.GRADIENT, step, dtype=output.dtype, shape=tuple(output.shape))
        output.backward(gradient)
        return gradient

    def _check_labels(self, labels: Tensor, step: int) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.config.num_classes):
            raise TransportError(
                f"the client sent labels outside 0..{self.config.num_classes - 1} for step {step}: refused"
            )

    @torch.no_grad()
    def _answer(self, exchange: _Exchange, phase: str, epoch: int | None, batches: int) -> None:
        link = exchange.link
        self.part.eval()
        shape = (None, *self.intermediate_shape)
        for batch in range(batches):
            step = exchange.next()
            received = _recv_rows(link, MessageKind.ACTIVATION, step, shape)
            output = self.part(received).contiguous()  # the logits; U-shaped, what the client's head takes
            link.send(MessageKind.ACTIVATION if self.config.ushaped else MessageKind.LOGITS, step, output)
            if self.recorder is not None:
                rows = {"activation": received, "batch": torch.full((len(received),), batch)}
                if phase == "inference":
                    rows = {"activation": received}
                    if not self.config.ushaped:
                        rows["predicted"] = output.argmax(dim=1)
                self.recorder.add(phase, epoch, **rows)

    def _validate(self, exchange: _Exchange, epoch: int, batches: int) -> None:
        self._answer(exchange, "val", epoch, batches)

    def _epoch_end(self, exchange: _Exchange, step: int, epoch: int, is_best: bool) -> None:
        if self.recorder is not None:
            self.recorder.flush("train", epoch)
            self.recorder.flush("val", epoch)
        self._keep_best(is_best, math.nan, epoch)
        self.epoch = epoch + 1
        if self.last_path.is_file():
            self.last_path.replace(self.state_dir / "previous.ckpt")
        self._checkpoint()
        loss_sum, correct, count = self._sums.tolist()
        exchange.link.send(MessageKind.ACK, step, _ack(1, loss_sum / max(count, 1), correct / max(count, 1)))
        if self.config.ushaped:  # no labels here: the loss is the client's
            self.log(f"epoch {epoch}: done")
        else:
            self.log(
                f"epoch {epoch}: train loss {loss_sum / max(count, 1):.4f}, accuracy {correct / max(count, 1):.4f}"
            )

    def _finish_run(self, exchange: _Exchange, step: int) -> Path:
        path = self._finish()
        exchange.link.send(MessageKind.ACK, step, _ack(1, self.best_epoch))
        return path

    def _infer(self, exchange: _Exchange, batches: int) -> None:
        if batches == 0:
            return
        self._answer(exchange, "inference", None, batches)
        if self.recorder is not None:
            self.recorder.flush("inference")
        exchange.link.send(MessageKind.ACK, exchange.next(), _ack(1))

    @torch.no_grad()
    def _query(self, exchange: _Exchange, step: int, welcome: bool) -> None:
        link = exchange.link
        batches = list(self._query_batches()) if welcome else []
        link.send(MessageKind.CONTROL, step, _control(Op.QUERIES, len(batches)))
        self.part.eval()
        shape = (None, *self.intermediate_shape)
        for images, labels in batches:
            step = exchange.next()
            link.send(MessageKind.IMAGES, step, images.contiguous())
            answer = link.recv(MessageKind.ACTIVATION, step, dtype=torch.float32, shape=(len(images), *shape[1:]))
            if self.recorder is not None:
                rows = {"images": images, "labels": labels, "activation": answer}
                if not self.config.ushaped:  # without the head the server does not compute a class
                    rows["predicted"] = self.part(answer).argmax(dim=1)
                self.recorder.add("queries", **rows)
        if self.recorder is not None:
            self.recorder.flush("queries")
        if not welcome and self.queries is not None and len(self.queries):
            self.log("the client refused the server's queries: none recorded")

    def _query_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.queries is None:
            return
        yield from zip(self.queries.images.split(QUERY_BATCH), self.queries.labels.split(QUERY_BATCH), strict=True)


# -- both parts together --------------------------------------------------------------------------------------------


def join_parties(client_path: str | Path, server_path: str | Path) -> SplitNN:
    """The whole network from the two parties' checkpoints (``final.ckpt`` or ``last.ckpt``), e.g. to evaluate it.

    Only a researcher who holds both can do this; neither party can.
    """
    client, server = _read_state(Path(client_path)), _read_state(Path(server_path))
    for path, payload, role in ((client_path, client, "client"), (server_path, server, "server")):
        if payload["role"] != role:
            raise CheckpointError(f"{path} is the {payload['role']}'s checkpoint, not the {role}'s")
    if client.get("agreed") != server.get("agreed"):
        differences = "; ".join(config_differences(str(client.get("agreed")), str(server.get("agreed"))))
        raise CheckpointError(f"{client_path} and {server_path} come from runs with other flags ({differences})")
    model = SplitNN(**client["hyper_parameters"])
    ushaped = "ushaped=1" in str(client.get("agreed", "")).splitlines()
    client_part, server_part = party_parts(model, ushaped)
    client_part.load_state_dict(client["state_dict"])
    server_part.load_state_dict(server["state_dict"])
    model.eval()
    return model
