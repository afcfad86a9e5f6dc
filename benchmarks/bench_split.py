"""Two-party training over loopback against one process, the link's round trip, and bytes on the wire per image.

Three figures, each printed and written to results/benchmarks/bench_split.csv:

- **throughput**: training images per second of ``--epochs`` epochs on ``--train-size``
  Fashion-MNIST images at ``--batch-size`` (validation on ``--val-size`` images each
  epoch included in both), in one process (``dpsnn.training.train_classifier``, Lightning)
  and as two processes on loopback (``dpsnn.transport.parties``: the server in a child
  process, recording what it receives as split.py does by default, and without recording).
  Runs alternate the order after an untimed warm-up of each; target: two processes at
  least 0.7x one process at batch 128.
- **round trip**: one activation of ``(batch, 500)`` float32 to the server and one tensor of
  the same size back (a training step's gradient), median over ``--round-trips``.
- **bytes per image**: what the client sends per training image (activation, label and the
  headers' share) and what the server sends back, beside the raw image's size.

Run: ``.venv/bin/python benchmarks/bench_split.py`` (see ``--help``); the conditions the
figures depend on are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from _timing import (
    RESULTS_DIR,
    CpuMonitor,
    Summary,
    add_machine_arguments,
    apply_machine_arguments,
    format_table,
    machine_note,
    ratio,
    verdict,
    with_error,
    write_csv,
)

from dpsnn.data import DEFAULT_DATA_DIR, make_splits
from dpsnn.training import train_classifier
from dpsnn.transport import Link
from dpsnn.transport.link import HEADER_SIZE
from dpsnn.transport.parties import ClientParty, PartyConfig, ServerParty

TARGET = 0.7
HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config(args: argparse.Namespace) -> PartyConfig:
    return PartyConfig(max_epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)


def splits(args: argparse.Namespace):  # noqa: ANN201
    return make_splits(
        "fashion-mnist", seed=args.seed, train_size=args.train_size, val_size=args.val_size, root=args.data_dir
    )


def serve(args: argparse.Namespace) -> None:
    """The child process: one server party (``--record`` folder or none), or the echo end of the round trips."""
    with Link.open(f"127.0.0.1:{args.port}", "server", timeout=120) as link:
        if args.serve == "echo":
            for step in range(args.round_trips + 1):
                seen = link.recv("activation", step, dtype=torch.float32, shape=(None, 500))
                link.send("gradient", step, seen)
            return
        record = None if args.serve == "no-record" else Path(args.scratch) / "recording"
        ServerParty(config(args), Path(args.scratch) / "server", record=record, progress=False, log=lambda _: None).run(
            link
        )


def child(args: argparse.Namespace, mode: str, port: int) -> subprocess.Popen:
    command = [sys.executable, str(HERE), "--serve", mode, "--port", str(port), "--scratch", str(args.scratch)]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    command += ["--round-trips", str(args.round_trips)]
    command += [] if args.threads is None else ["--threads", str(args.threads)]
    command += ["--system-malloc"] if args.system_malloc else []
    return subprocess.Popen(command)


def two_processes(args: argparse.Namespace, data, mode: str) -> float:  # noqa: ANN001
    """Seconds of one two-party run (from the link's opening to the end of training), the server in a child."""
    port = free_port()
    server = child(args, mode, port)
    party = ClientParty(
        config(args),
        Path(args.scratch) / "client",
        data,
        infer=0,
        answer_queries=False,
        progress=False,
        log=lambda _: None,
    )
    with Link.open(f"127.0.0.1:{port}", "client", timeout=120, connect_timeout=120) as link:
        start = time.perf_counter()
        party.run(link)
        seconds = time.perf_counter() - start
    if server.wait(60) != 0:
        sys.exit(f"error: the server of the {mode} run failed")
    return seconds


def one_process(args: argparse.Namespace, data) -> float:  # noqa: ANN001
    start = time.perf_counter()
    train_classifier(data, batch_size=args.batch_size, max_epochs=args.epochs, seed=args.seed, progress=False)
    return time.perf_counter() - start


def round_trips(args: argparse.Namespace) -> list[float]:
    port = free_port()
    server = child(args, "echo", port)
    activation = torch.randn(args.batch_size, 500)
    times = []
    with Link.open(f"127.0.0.1:{port}", "client", timeout=120, connect_timeout=120) as link:
        for step in range(args.round_trips + 1):
            start = time.perf_counter()
            link.send("activation", step, activation)
            link.recv("gradient", step, dtype=torch.float32, shape=activation.shape)
            if step:  # the first one pays for the connection's warm-up
                times.append(time.perf_counter() - start)
    server.wait(60)
    return times


def bytes_per_image(batch_size: int) -> dict[str, float]:
    header = HEADER_SIZE * 8
    up = (500 * 4 + 8) + 2 * header / batch_size  # activation + label, their two headers shared by the batch
    down = 500 * 4 + header / batch_size  # the gradient
    return {"client_to_server": up, "server_to_client": down, "raw_uint8": 28 * 28, "raw_float32": 28 * 28 * 4}


VARIANTS = ("one process", "two processes", "two processes, no recording")


def time_variants(args: argparse.Namespace, data) -> dict[str, list[float]]:  # noqa: ANN001
    runs = {
        "one process": lambda: one_process(args, data),
        "two processes": lambda: two_processes(args, data, "record"),
        "two processes, no recording": lambda: two_processes(args, data, "no-record"),
    }
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            print(f"  run {repeat + 1}/{args.repeats}: {name}", flush=True)
            times[name].append(runs[name]())
    return times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=5120)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/dpsnn-bench-split"))
    parser.add_argument("--serve", choices=["record", "no-record", "echo"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    add_machine_arguments(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "bench_split.csv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pinned = apply_machine_arguments(args)
    if args.serve:
        serve(args)
        return
    print(
        f"{args.epochs} epochs on {args.train_size} Fashion-MNIST images (val {args.val_size}), batch "
        f"{args.batch_size}, reference network, CPU. {machine_note(pinned)}"
    )
    monitor = CpuMonitor()
    data = splits(args)
    times = time_variants(args, data)
    images = args.epochs * args.train_size
    rates = {name: Summary.of([images / t for t in ts]) for name, ts in times.items()}
    records, rows = [], []
    for name in VARIANTS:
        against = ratio(rates[name], rates["one process"])
        rows.append(
            [name, with_error(rates[name].median, rates[name].stderr), with_error(*against), str(rates[name].n)]
        )
        records.append(
            {
                "metric": "train_images_per_s",
                "variant": name,
                "median": rates[name].median,
                "stderr": rates[name].stderr,
                "n": rates[name].n,
                "ratio_to": "one process",
                "ratio": against[0],
                "ratio_stderr": against[1],
                "batch_size": args.batch_size,
                "train_size": args.train_size,
            }
        )
    print(format_table(["variant", "images/s", "x one process", "runs"], rows))
    trips = Summary.of([1000 * t for t in round_trips(args)])
    records.append(
        {
            "metric": "round_trip_ms",
            "variant": f"({args.batch_size}, 500) float32 each way",
            "median": trips.median,
            "stderr": trips.stderr,
            "n": trips.n,
            "batch_size": args.batch_size,
        }
    )
    print(
        f"round trip, ({args.batch_size}, 500) float32 each way: {with_error(trips.median, trips.stderr)} ms "
        f"(median of {trips.n})"
    )
    sizes = bytes_per_image(args.batch_size)
    for name, value in sizes.items():
        records.append(
            {
                "metric": "bytes_per_image",
                "variant": name,
                "median": value,
                "stderr": 0.0,
                "n": 1,
                "batch_size": args.batch_size,
            }
        )
    print(
        f"bytes per training image: client to server {sizes['client_to_server']:.0f}, back "
        f"{sizes['server_to_client']:.0f}; the raw image: {sizes['raw_uint8']} (uint8), "
        f"{sizes['raw_float32']} (float32)"
    )
    achieved = ratio(rates["two processes"], rates["one process"])[0]
    print(
        f"Target: two processes >= {TARGET:g}x one process at batch {args.batch_size}: {achieved:.2f}x, "
        f"{verdict(achieved >= TARGET)}"
    )
    print(f"Written {write_csv(args.output, records)} ({machine_note(pinned)})")
    print(monitor.report())


if __name__ == "__main__":
    main()
