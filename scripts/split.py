"""Train a split network as two parties in two processes, or on two hosts: the server and the client.

    python scripts/split.py server --address 0.0.0.0:29500 --noise-scale 0.5     # terminal 1 (or host 1)
    python scripts/split.py client --address HOST:29500 --noise-scale 0.5        # terminal 2 (or host 2)

Both take the training flags of train_model.py and must be given the same ones (they check
it before training). The client holds the data and the client part and adds the wire's noise
before sending; the server holds the server part, receives the labels with each batch, and
records everything it receives in --record (safetensors files; see
``dpsnn.transport.recording``). After training the client sends its test split through the
network (--infer), and the server sends its own auxiliary images through the client
(--queries): the pairs an inversion attack needs, so that

    python scripts/train_attacker.py --from-recording recordings/split

attacks what the server recorded. Either side can be stopped and restarted with --resume:
both go on from the last epoch both finished. The client prints its val accuracy and dCor
and appends them, with their standard errors, to results/split.csv.

With --clients N one server trains with N clients (client K: --client K, at the server's
port + K), in turns (--scheme round-robin) or at once with their client parts averaged every
epoch (--scheme splitfed); see ``dpsnn.transport.several``.

The link is PyTorch's gloo over TCP: unencrypted and unauthenticated. Between hosts, run it
over an SSH tunnel or a VPN (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from dpsnn.cli import (
    ArgumentParser,
    add_run_arguments,
    add_training_arguments,
    check_images,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    training_defences,
)
from dpsnn.data import DEFAULT_DATA_DIR, Splits, dataset_info, make_splits
from dpsnn.defences import label
from dpsnn.defences.base import param_of
from dpsnn.errors import DataError
from dpsnn.results import RESULTS_DIR, append_rows, check_columns, format_measure
from dpsnn.transport import Link
from dpsnn.transport.parties import SCHEMES, ClientParty, PartyConfig, RunResult, ServerParty
from dpsnn.transport.several import DEFAULT_TURN_TIMEOUT, RoundsClient, RoundsServer, client_address

COLUMNS = (
    "client_state",
    "dataset",
    "architecture",
    "defences",
    "seed",
    "noise_scale",
    "nopeek_weight",
    "train_size",
    "epoch",
    "n_val",
    "val_accuracy",
    "val_accuracy_se",
    "val_dcor",
    "val_dcor_se",
    "n_test",
    "test_accuracy",
    "test_accuracy_se",
)
STATE_DIR = Path("models/split")
RECORD_DIR = Path("recordings/split")


def _add_link_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    where = "listen at (0.0.0.0:PORT: every interface)" if role == "server" else "reach the server at"
    parser.add_argument("--address", required=True, help=f"HOST:PORT, tcp://HOST:PORT or env:// to {where}")
    parser.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds to wait for any one message (default: 60)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=300.0,
        help="seconds to wait for the other party to connect (default: 300)",
    )
    default = f"{STATE_DIR / role}" + ("" if role == "server" else "; of several: client0, client1, …")
    parser.add_argument("--state-dir", type=Path, default=None, help=f"checkpoints (default: {default})")
    parser.add_argument("--resume", action="store_true", help="go on from the last epoch both parties finished")
    parser.add_argument(
        "--clients",
        type=positive_int,
        default=1,
        help="clients training with one server (default: 1); client K meets the server at its port + K",
    )
    parser.add_argument(
        "--ushaped",
        action="store_true",
        help="U-shaped split: the labels and the last layer stay with the client (one client only)",
    )
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        default="round-robin",
        help="how several clients train: in turns (round-robin), or at once, averaged each epoch (splitfed)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = parser.add_subparsers(dest="role", required=True, metavar="{server,client}")
    server = roles.add_parser("server", help="hold the server part; record what arrives")
    client = roles.add_parser("client", help="hold the data and the client part")
    for role, sub in (("server", server), ("client", client)):
        add_training_arguments(sub)
        _add_link_arguments(sub, role)
        add_run_arguments(sub, DEFAULT_DATA_DIR, RESULTS_DIR)
    server.add_argument("--record", type=Path, default=RECORD_DIR, help=f"recording folder (default: {RECORD_DIR})")
    server.add_argument("--no-record", action="store_true", help="record nothing")
    server.add_argument(
        "--queries",
        type=non_negative_int,
        default=None,
        help="images of the server's auxiliary split sent through the client after training (default: all; 0: none)",
    )
    client.add_argument(
        "--infer",
        type=non_negative_int,
        default=None,
        help="test images sent through the trained network (default: the whole test split; 0: none)",
    )
    client.add_argument("--refuse-queries", action="store_true", help="do not answer the server's queries")
    client.add_argument(
        "--client", type=non_negative_int, default=0, help="which of several clients this is, from 0 (default: 0)"
    )
    client.add_argument(
        "--turn-timeout",
        type=positive_float,
        default=DEFAULT_TURN_TIMEOUT,
        help=f"seconds one of several clients waits while the others train (default: {DEFAULT_TURN_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    several = args.clients > 1
    if args.state_dir is None:
        args.state_dir = STATE_DIR / (f"client{args.client}" if args.role == "client" and several else args.role)
    if several and args.resume:
        parser.error("--resume: a run of several clients cannot be resumed; start it afresh")
    if args.role == "client" and args.client >= args.clients:
        parser.error(f"--client {args.client}: the clients of --clients {args.clients} are 0 to {args.clients - 1}")
    if several:
        client_address(args.address, args.clients - 1 if args.role == "server" else args.client)  # before any work
    return args


def _config(args: argparse.Namespace) -> PartyConfig:
    info = dataset_info(args.dataset)
    return PartyConfig(
        architecture=args.architecture,
        dataset=args.dataset,
        defences=training_defences(args),
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        max_epochs=args.max_epochs,
        seed=args.seed,
        num_classes=info.num_classes,
        input_shape=info.image_shape,
        batch_size=args.batch_size,
        clients=args.clients,
        scheme=args.scheme,
        ushaped=args.ushaped,
    )


def _splits(args: argparse.Namespace, test_size: int | None = None) -> Splits:
    sizes = {"val_size": args.val_size, "aux_size": args.aux_split_size}
    return make_splits(
        args.dataset,
        seed=args.seed,
        train_size=args.train_size,
        root=args.data_dir,
        test_size=test_size,
        **{key: value for key, value in sizes.items() if value is not None},
    )


def serve(args: argparse.Namespace) -> int:
    config = _config(args)
    check_images("the split network", config.input_shape, args.dataset)
    queries = None
    if args.queries != 0:
        aux = _splits(args).aux
        if args.queries is not None and args.queries > len(aux):
            raise DataError(f"--queries {args.queries} is more than the server's auxiliary split ({len(aux)} images)")
        queries = aux.subset(args.queries)
    splits_metadata = {
        "val_size": args.val_size or 5000,
        "aux_split_size": args.aux_split_size or 5000,
        "train_size": args.train_size or "",
    }
    options = dict(
        record=None if args.no_record else args.record,
        queries=queries,
        progress=not args.no_progress,
        record_metadata=splits_metadata,
    )
    if args.clients > 1:
        final = _serve_several(args, RoundsServer(config, args.state_dir, **options))
    else:
        party = ServerParty(config, args.state_dir, resume=args.resume, **options)
        print(f"server: waiting for the client at {args.address} (at most {args.connect_timeout:g} s)")
        with Link.open(args.address, "server", timeout=args.timeout, connect_timeout=args.connect_timeout) as link:
            final = party.run(link)
    print(f"saved {final}")
    if not args.no_record:
        print(f"recorded what the server received in {args.record}/")
    return 0


def _serve_several(args: argparse.Namespace, party: RoundsServer) -> Path:
    """Open one link per client (client K at the port + K), then serve the rounds; every link closes on the way out."""
    with contextlib.ExitStack() as stack:
        links = []
        for index in range(args.clients):
            address = client_address(args.address, index)
            print(f"server: waiting for client {index} at {address} (at most {args.connect_timeout:g} s)")
            link = Link.open(address, "server", timeout=args.timeout, connect_timeout=args.connect_timeout)
            links.append(stack.enter_context(link))
        return party.run(links)


def train_client(args: argparse.Namespace) -> int:
    config = _config(args)
    check_images("the split network", config.input_shape, args.dataset)
    table = args.results_dir / "split.csv"
    check_columns(table, COLUMNS)
    splits = _splits(args)
    options = dict(infer=args.infer, answer_queries=not args.refuse_queries, progress=not args.no_progress)
    address = args.address
    if args.clients > 1:
        splits = dataclasses.replace(splits, train=splits.train.part(args.client, args.clients))
        address = client_address(args.address, args.client)
        party = RoundsClient(
            config, args.state_dir, splits, index=args.client, turn_timeout=args.turn_timeout, **options
        )
    else:
        party = ClientParty(config, args.state_dir, splits, resume=args.resume, **options)
    print(f"client: connecting to the server at {address} (at most {args.connect_timeout:g} s)")
    with Link.open(address, "client", timeout=args.timeout, connect_timeout=args.connect_timeout) as link:
        result = party.run(link)
    if result is None:  # one of several clients, not the one that validates
        print(f"saved {party.final_path}; client 0 validates and writes the results")
        return 0
    row = _row(args, config, party, result)
    append_rows(table, [row], key_columns=COLUMNS)
    _print(party, result, row)
    return 0


def _row(args: argparse.Namespace, config: PartyConfig, party: ClientParty, result: RunResult) -> dict[str, object]:
    return {
        "client_state": str(party.final_path),
        "dataset": config.dataset,
        "architecture": config.architecture,
        "defences": party.model.trained_with(),
        "seed": config.seed,
        "noise_scale": param_of(config.defences, "laplace"),
        "nopeek_weight": param_of(config.defences, "nopeek"),
        "train_size": len(party.splits.train),
        "epoch": result.best_epoch,
        "n_val": result.n_val,
        "val_accuracy": result.val_accuracy,
        "val_accuracy_se": result.val_accuracy_se,
        "val_dcor": result.val_dcor,
        "val_dcor_se": result.val_dcor_se,
        "n_test": result.n_test,
        "test_accuracy": "" if result.test_accuracy is None else result.test_accuracy,
        "test_accuracy_se": "" if result.test_accuracy_se is None else result.test_accuracy_se,
        # after the first columns, so that a table of two-party runs gains them
        "clients": config.clients,
        "scheme": config.scheme if config.clients > 1 else "",
        "ushaped": int(config.ushaped),
    }


def _print(party: ClientParty, result: RunResult, row: dict[str, object]) -> None:
    print(f"saved {party.final_path} (the client part at its best epoch, {result.best_epoch})")
    print(f"defences: {label(party.config.defences)}")
    print(f"val accuracy: {format_measure(row, 'val_accuracy')}")
    print(f"val dCor(x, what the server sees): {format_measure(row, 'val_dcor')}")
    if result.test_accuracy is not None:
        print(
            f"test accuracy ({result.n_test} images sent as inference queries): {format_measure(row, 'test_accuracy')}"
        )
    print(f"answered {result.queries_answered} of the server's queries")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return serve(args) if args.role == "server" else train_client(args)


if __name__ == "__main__":
    run(main)
