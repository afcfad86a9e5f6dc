"""Bad input to the scripts: one clear line on stderr, a non-zero exit, no traceback, nothing written.

The cases that read files (checkpoints, datasets, folders) run with DPSNN_OFFLINE=1, from the
repository root, with all of a script's folders pointed into a temporary workspace, as a user would
start it. Starting a script costs seconds (torch and Lightning are imported), so one module fixture
runs them all and each test checks one outcome. Two of them run as real subprocesses
(:data:`SUBPROCESS_CASES`: ``train_model.py`` refusing a missing dataset, and ``train_attacker.py``
refusing a checkpoint that would run code when unpickled), which checks what only a real process
shows: warnings at import time on stderr, the exit status the interpreter really returns, torch's
own loading defaults. The others call the script's ``main`` through ``run`` in this process, one
after the other (:func:`run_in_process`): stdout, stderr, warnings and log records are captured as
a process would show them, and the working folder, ``sys.argv``, the environment, torch's threads
and the random generators are put back after each. The cases argparse or a registry refuses before
anything is read (the plain flags, ``--architecture``, ``--defence``, ``--wire``, ``--attack``) and
``--help`` run each script's ``main`` through ``run`` in this process too, with the same checks.
Checkpoints and results tables of the first schema keep working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import random
import re
import runpy
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dpsnn import InversionAttacker, SplitNN
from dpsnn.checkpoints import FORMAT_VERSION, save_checkpoint
from dpsnn.cli import attacked_wire, merge_defences, run, wire_from, wire_key
from dpsnn.data import DATASETS, make_splits
from dpsnn.defences import DEFENCES, Defence, Laplace, NoPeek
from dpsnn.errors import ConfigError
from dpsnn.results import read_table
from dpsnn.training import train_classifier

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny_0noise_0nopeek_epoch=00.ckpt"
STUB = "demo_0noise_0nopeek_epoch=00.ckpt"
WORKERS = 2  # the subprocess cases; more processes than cores make every start-up slower


@dataclass
class Workspace:
    """A case's own folders; ``planted`` holds the files a case puts there before the script runs."""

    root: Path
    data: Path  # the shared --data-dir with Fashion-MNIST unpacked
    tiny: Path  # a small trained classifier checkpoint, outside the workspace
    planted: set[str] = field(default_factory=set)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def empty_data(self) -> Path:
        return self.root / "empty-data"

    def create(self) -> Workspace:
        for folder in (
            "models/classifiers",
            "models/attackers",
            "models/validators",
            "results",
            "inputs",
            "empty-data",
        ):
            (self.root / folder).mkdir(parents=True)
        return self

    def plant(self, folder: Path, name: str, content: bytes | None = None) -> Path:
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        if path.is_relative_to(self.models) or path.is_relative_to(self.results):
            self.planted.add(str(path.relative_to(self.root)))
        return path

    def written(self) -> set[str]:
        """Every file under models/, results/ and the empty data folder, hidden ones included."""
        found = set()
        for top in (self.models, self.results, self.empty_data):
            for folder, _, files in os.walk(top):
                found.update(str((Path(folder) / name).relative_to(self.root)) for name in files)
        return found


def folder_flags(script: str, ws: Workspace) -> list[str]:
    models, results, data = ws.models, ws.results, str(ws.data)
    flags = {
        "train_model.py": [
            "--models-dir", models / "classifiers", "--results-dir", results, "--data-dir", data, "--no-progress",
        ],
        "train_attacker.py": [
            "--classifiers-dir", models / "classifiers", "--models-dir", models / "attackers",
            "--results-dir", results, "--data-dir", data, "--no-progress",
        ],
        "evaluate_models.py": [
            "--classifiers-dir", models / "classifiers", "--data-dir", data,
            "--output", results / "model_performances.csv",
        ],
        "evaluate_attackers.py": [
            "--attackers-dir", models / "attackers", "--classifiers-dir", models / "classifiers",
            "--validators-dir", models / "validators", "--data-dir", data,
            "--output", results / "attack_performances.csv", "--no-progress",
        ],
        "plot_attack.py": [
            "--attackers-dir", models / "attackers", "--classifiers-dir", models / "classifiers",
            "--data-dir", data, "--output", results / "figures" / "attack_grid.png",
        ],
    }  # fmt: skip
    return [str(flag) for flag in flags[script]]


# --- what some cases put in place before their script runs -------------------------------------


class CreatesMarker:
    """Unpickling this opens (and so creates) ``marker``: code from the file would have run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def untrusted_checkpoint(path: Path, marker: Path) -> Path:
    """Everything a dpsnn checkpoint has, plus an object that runs code when unpickled."""
    payload = {
        "dpsnn": {"kind": "classifier", "format_version": FORMAT_VERSION},
        "hyper_parameters": {"dataset": "fashion-mnist", "seed": 0},
        "epoch": 0,
        "extra": {"note": CreatesMarker(marker)},
        "state_dict": SplitNN().state_dict(),
    }
    torch.save(payload, path)
    return path


def other_client() -> nn.Sequential:
    """ClientNet's layer layout with other channel counts: the same keys, other shapes."""
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3),
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 500),
        nn.Tanh(),
    )


def stub_classifier(path: Path) -> Path:
    return save_checkpoint(SplitNN(dataset="fashion-mnist", seed=0), path, "classifier", 0)


def plant_stub(ws: Workspace) -> None:
    stub_classifier(ws.plant(ws.models / "classifiers", STUB))


def plant_attacker_as_classifier(ws: Workspace) -> None:
    attacker = InversionAttacker(target_model=STUB, dataset="fashion-mnist", data_seed=0, aux_size=10, seed=0)
    save_checkpoint(attacker, ws.inputs / "attacker.ckpt", "attacker", 0)


def other_architecture_model() -> SplitNN:
    """A checkpoint that names the reference network but holds tensors of another layout."""
    model = SplitNN(dataset="fashion-mnist", seed=0)
    model.client = other_client()
    return model


def plant_other_architecture(ws: Workspace) -> None:
    save_checkpoint(other_architecture_model(), ws.inputs / "other_0noise_0nopeek_epoch=00.ckpt", "classifier", 0)


CORRUPT = {
    "random-bytes-seed0": random.Random(0).randbytes(4096),
    "random-bytes-seed2": random.Random(2).randbytes(4096),
    "text-file": b"hello world\n",
}


def plant_corrupt(kind: str) -> Callable[[Workspace], None]:
    def plant(ws: Workspace) -> None:
        (ws.inputs / "corrupt.ckpt").write_bytes(CORRUPT[kind])

    return plant


def plant_untrusted(ws: Workspace) -> None:
    untrusted_checkpoint(ws.inputs / "untrusted.ckpt", ws.root / "marker")


def plant_tiny(ws: Workspace) -> None:
    shutil.copy(ws.tiny, ws.plant(ws.models / "classifiers", TINY))


def plant_truncated_in_classifiers(ws: Workspace) -> None:
    whole = stub_classifier(ws.inputs / STUB).read_bytes()
    ws.plant(ws.models / "classifiers", STUB, whole[: len(whole) // 2])


def plant_classifier_in_attackers(ws: Workspace) -> None:
    stub_classifier(ws.plant(ws.models / "attackers", STUB))


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    script: str
    args: Callable[[Workspace], list[str]]
    expect: Callable[[Workspace], list[str]]  # what the error line must contain
    plant: Callable[[Workspace], None] | None = None


def fixed(*items: str) -> Callable[[Workspace], list[str]]:
    return lambda ws: list(items)


CASES = [
    # train_model.py
    Case(
        "train_model-missing-dataset",
        "train_model.py",
        lambda ws: ["--dataset", "mnist", "--data-dir", str(ws.empty_data)],
        lambda ws: [
            "'mnist' not found",
            f"{ws.empty_data / 'MNIST' / 'raw'}/",  # where it looked locally
            "/usr/share/datasets/mnist/",  # and in the system data folder
            "DPSNN_OFFLINE",
            "fix: ",
            "copy the four IDX files into",
        ],
    ),
    Case(
        "train_model-train-size-too-large",
        "train_model.py",
        fixed("--train-size", "60000"),
        fixed("--train-size 60000", "50000"),
    ),
    # train_attacker.py
    Case(
        "train_attacker-unknown-model",
        "train_attacker.py",
        fixed("--model", "missing_05noise_01nopeek"),
        fixed("missing_05noise_01nopeek", STUB),  # names what was asked for and lists what is there
        plant_stub,
    ),
    Case(
        "train_attacker-attacker-as-model",
        "train_attacker.py",
        lambda ws: ["--model", str(ws.inputs / "attacker.ckpt")],
        fixed("attacker.ckpt", "attacker checkpoint", "not a classifier"),
        plant_attacker_as_classifier,
    ),
    Case(
        "train_attacker-other-architecture",
        "train_attacker.py",
        lambda ws: ["--model", str(ws.inputs / "other_0noise_0nopeek_epoch=00.ckpt")],
        fixed("other_0noise_0nopeek_epoch=00.ckpt", "another architecture"),
        plant_other_architecture,
    ),
    Case(
        "train_attacker-corrupt-model",
        "train_attacker.py",
        lambda ws: ["--model", str(ws.inputs / "corrupt.ckpt")],
        fixed("corrupt.ckpt", "corrupt"),
        plant_corrupt("random-bytes-seed0"),
    ),
    Case(
        "train_attacker-untrusted-model",
        "train_attacker.py",
        lambda ws: ["--model", str(ws.inputs / "untrusted.ckpt")],
        fixed("untrusted.ckpt", "untrusted"),
        plant_untrusted,
    ),
    Case(
        "train_attacker-aux-size-too-large",
        "train_attacker.py",
        fixed("--model", "tiny_0noise_0nopeek", "--aux-size", "5001", "--max-epochs", "1"),
        fixed("--aux-size 5001", "5000"),
        plant_tiny,
    ),
    # evaluate_models.py
    Case(
        "evaluate_models-no-classifiers",
        "evaluate_models.py",
        fixed(),
        lambda ws: ["no checkpoints", str(ws.models / "classifiers")],
    ),
    Case(
        "evaluate_models-truncated-classifier",
        "evaluate_models.py",
        fixed(),
        fixed(STUB, "corrupt"),
        plant_truncated_in_classifiers,
    ),
    # evaluate_attackers.py
    Case(
        "evaluate_attackers-no-attackers",
        "evaluate_attackers.py",
        fixed(),
        lambda ws: ["no checkpoints", str(ws.models / "attackers")],
    ),
    Case(
        "evaluate_attackers-classifier-as-attacker",
        "evaluate_attackers.py",
        fixed(),
        fixed(STUB, "classifier checkpoint", "attacker"),
        plant_classifier_in_attackers,
    ),
    # plot_attack.py
    Case(
        "plot_attack-no-attackers",
        "plot_attack.py",
        fixed(),
        lambda ws: ["no checkpoints", str(ws.models / "attackers")],
    ),
]

HELP = {
    "train_model.py": [
        "--noise-scale",
        "--nopeek-weight",
        "--dataset",
        "--batch-size",
        "--learning-rate",
        "--max-epochs",
        "--train-size",
        "--seed",
        "--saveas",
        "--architecture",
        "--defence",
        "--val-size",
        "--aux-split-size",
    ],
    "train_attacker.py": [
        "--model",
        "--attack",
        "--model-noise",
        "--wire",
        "--aux-dataset",
        "--aux-size",
        "--max-epochs",
    ],
    "evaluate_models.py": ["--models", "--noise", "--wire", "--test-size"],
}


# --- running them ------------------------------------------------------------------------------


# Run as real subprocesses; every other case of CASES runs in this process (see the module docstring).
SUBPROCESS_CASES = {"train_model-missing-dataset", "train_attacker-untrusted-model"}


def run_script(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=REPO,
        env={**env, "DPSNN_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@functools.cache
def script_main(script: str) -> Callable:
    return runpy.run_path(str(REPO / "scripts" / script))["main"]


@contextlib.contextmanager
def output_as_a_process_would(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """Inside the block, stdout, stderr, warnings and log records reach ``out`` and ``err`` as in a fresh process.

    pytest records warnings and holds the root logger's handlers; a script started on its own has
    Python's default warning filters and no root handler (records of WARNING and above then go to
    stderr). Handlers that kept the stream they were made with (Lightning's) are pointed at the
    buffers. Everything is put back afterwards.
    """
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level
    standard = {id(sys.stdout): out, id(sys.__stdout__): out, id(sys.stderr): err, id(sys.__stderr__): err}
    moved = [
        (handler, handler.stream)
        for logger in [root, *logging.Logger.manager.loggerDict.values()]
        for handler in getattr(logger, "handlers", [])
        if type(handler) is logging.StreamHandler and id(handler.stream) in standard
    ]
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        # A process shows deprecations its script's own code (__main__ there) triggers.
        warnings.filterwarnings("default", category=DeprecationWarning, module="<run_path>")
        root.handlers[:] = []
        root.setLevel(logging.WARNING)
        for handler, stream in moved:
            handler.setStream(standard[id(stream)])
        try:
            yield
        finally:
            for handler, stream in moved:
                handler.setStream(stream)
            root.handlers[:] = root_handlers
            root.setLevel(root_level)
            for shown in caught:
                err.write(
                    warnings.formatwarning(shown.message, shown.category, shown.filename, shown.lineno, shown.line)
                )


def run_in_process(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python scripts/<script> <args>`` from the repository root, as :func:`run_script` runs it, in this process."""
    main = script_main(script)
    out, err = io.StringIO(), io.StringIO()
    threads, rng = torch.get_num_threads(), (torch.get_rng_state(), random.getstate(), np.random.get_state())
    environ = dict(os.environ)
    try:
        with pytest.MonkeyPatch.context() as patch, output_as_a_process_would(out, err):
            patch.chdir(REPO)
            patch.setattr(sys, "argv", [f"scripts/{script}", *args])
            patch.setenv("DPSNN_OFFLINE", "1")
            run(main, args)
    except SystemExit as exited:  # what the interpreter makes of sys.exit(code)
        if exited.code is None or isinstance(exited.code, int):
            returncode = exited.code or 0
        else:
            err.write(f"{exited.code}\n")
            returncode = 1
    except Exception:  # escaped run(): the traceback a process would print, and exit 1
        err.write(traceback.format_exc())
        returncode = 1
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if dict(os.environ) != environ:  # e.g. PL_GLOBAL_SEED, were a script to seed Lightning
            os.environ.clear()
            os.environ.update(environ)
    return subprocess.CompletedProcess(
        [sys.executable, f"scripts/{script}", *args], returncode, out.getvalue(), err.getvalue()
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case of CASES: id -> (workspace, completed process).

    The subprocess cases run on a small pool while this process trains the small classifier the
    ``plant_tiny`` cases need and then runs the other cases, one after the other.
    """
    data_dir = tmp_path_factory.mktemp("data")  # shared by every case, Fashion-MNIST unpacked once
    splits = make_splits("fashion-mnist", seed=0, train_size=500, root=data_dir)
    tiny = tmp_path_factory.mktemp("tiny") / TINY
    workspaces = {}

    def prepare(case: Case) -> list[str]:
        ws = Workspace(tmp_path_factory.mktemp(case.id), data_dir, tiny).create()
        if case.plant:
            case.plant(ws)
        workspaces[case.id] = ws
        return [*folder_flags(case.script, ws), *case.args(ws)]

    assert SUBPROCESS_CASES <= {case.id for case in CASES}
    assert not any(case.plant is plant_tiny for case in CASES if case.id in SUBPROCESS_CASES)
    with ThreadPoolExecutor(WORKERS) as pool:
        env = dict(os.environ)  # read here: the cases in this process change it for a moment
        started = {
            case.id: pool.submit(run_script, case.script, prepare(case), env)
            for case in CASES
            if case.id in SUBPROCESS_CASES
        }
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # leave the other core to the subprocesses
        try:
            model, _ = train_classifier(splits, max_epochs=1, seed=0, progress=False)
            save_checkpoint(model, tiny, "classifier", 0)
            results = {
                case.id: run_in_process(case.script, prepare(case)) for case in CASES if case.id not in SUBPROCESS_CASES
            }
        finally:
            torch.set_num_threads(threads)
        results |= {key: future.result() for key, future in started.items()}
    return {key: (workspaces[key], result) for key, result in results.items()}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_clear_line_and_writes_nothing(case, outcomes):
    ws, result = outcomes[case.id]
    stderr = result.stderr
    assert result.returncode != 0, f"exit 0 for bad input; stdout:\n{result.stdout[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    line = lines[0]
    assert line.startswith(f"{case.script}: error: "), line
    for part in case.expect(ws):
        assert part in line, f"{part!r} is not in the error line: {line}"
    assert ws.written() == ws.planted, f"files left behind: {sorted(ws.written() - ws.planted)}"


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_checkpoint_variants_give_one_line(kind, tmp_path, capsys, monkeypatch):
    """More kinds of damage, through the script's own main and run() in this process (no start-up cost)."""
    ws = Workspace(tmp_path, tmp_path / "data", tmp_path / TINY).create()
    plant_corrupt(kind)(ws)
    main = runpy.run_path(str(REPO / "scripts" / "train_attacker.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["train_attacker.py"])
    args = [*folder_flags("train_attacker.py", ws), "--model", str(ws.inputs / "corrupt.ckpt")]
    with pytest.raises(SystemExit) as exited:
        run(main, args)
    assert exited.value.code not in (0, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train_attacker.py: error: ") and "corrupt.ckpt" in lines[0] and "corrupt" in lines[0]
    assert ws.written() == set()


def test_untrusted_checkpoint_runs_no_code(outcomes, tmp_path):
    ws, result = outcomes["train_attacker-untrusted-model"]
    assert result.returncode != 0
    assert not (ws.root / "marker").exists(), "loading the checkpoint ran code from it"
    # The same kind of file does run code when loaded without weights_only: the check above is not vacuous.
    control_marker = tmp_path / "control-marker"
    control = untrusted_checkpoint(tmp_path / "control.ckpt", control_marker)
    loaded = torch.load(control, weights_only=False)
    loaded["extra"]["note"].close()
    assert control_marker.exists()


def test_other_architecture_fixture_really_differs():
    ours = other_architecture_model().state_dict()
    default = SplitNN().state_dict()
    assert ours.keys() == default.keys()
    assert any(ours[key].shape != default[key].shape for key in ours)


@pytest.mark.parametrize("script", sorted(HELP))
def test_help_lists_the_flags(script, capsys, monkeypatch):
    assert run_main(script, ["--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    for flag in HELP[script]:
        # --model must be there on its own, not only as the start of --model-noise
        assert re.search(rf"{re.escape(flag)}(?![\w-])", out), f"{flag} is missing from {script} --help"


# --- the registries' flags, run in this process ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerSampleToy(Defence):
    """A stand-in for DP-SGD: a defence that needs per-sample gradients (registered only by a test)."""

    noise: float = 0.0
    name = "toy-per-sample"
    strength = "noise"
    per_sample = True


def register_per_sample_toy(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEFENCES, PerSampleToy.name, PerSampleToy)


def register_tiny_images(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset of 6×6 images: too small for a ResNet-18 split (no such dataset is registered)."""
    monkeypatch.setitem(DATASETS, "tiny-images", dataclasses.replace(DATASETS["mnist"], image_shape=(1, 6, 6)))


def plant_unknown_table(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.plant(ws.results, "train_model.csv", b"model,accuracy\nsomething,0.5\n")


def plant_model(name: str, model: SplitNN) -> Callable[[Workspace, pytest.MonkeyPatch], None]:
    def plant(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
        save_checkpoint(model, ws.plant(ws.models / "classifiers", name), "classifier", 0)

    return plant


@dataclass
class InProcess:
    id: str
    script: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # what the error line must contain
    code: int  # 2: a usage error found by argparse; 1: found once the arguments are read
    plant: Callable[[Workspace, pytest.MonkeyPatch], None] | None = None


IN_PROCESS = [
    # the plain flags, refused before anything is read
    InProcess("train_model-negative-noise", "train_model.py", ("--noise-scale", "-1"), ("--noise-scale", "'-1'"), 2),
    InProcess("train_model-text-noise", "train_model.py", ("--noise-scale", "abc"), ("--noise-scale", "'abc'"), 2),
    InProcess(
        "train_model-negative-nopeek", "train_model.py", ("--nopeek-weight", "-0.5"), ("--nopeek-weight", "'-0.5'"), 2
    ),
    InProcess("train_model-nan-nopeek", "train_model.py", ("--nopeek-weight", "nan"), ("--nopeek-weight", "nan"), 2),
    InProcess(
        "train_model-unknown-dataset",
        "train_model.py",
        ("--dataset", "unknown-name"),
        ("unknown-name", "fashion-mnist", "mnist"),
        1,
    ),
    InProcess("train_model-zero-epochs", "train_model.py", ("--max-epochs", "0"), ("--max-epochs", "positive"), 2),
    InProcess(
        "train_model-unknown-schedule", "train_model.py", ("--lr-schedule", "cosine"), ("--lr-schedule", "one-cycle"), 2
    ),
    InProcess("train_attacker-no-model", "train_attacker.py", (), ("--model", "required"), 1),
    InProcess(
        "train_attacker-negative-model-noise",
        "train_attacker.py",
        ("--model", "demo_0noise_0nopeek", "--model-noise", "-1"),
        ("--model-noise", "'-1'"),
        2,
        plant_model(STUB, SplitNN(dataset="fashion-mnist", seed=0)),
    ),
    InProcess("evaluate_models-negative-noise", "evaluate_models.py", ("--noise", "-2"), ("--noise", "'-2'"), 2),
    InProcess("plot_attack-zero-images", "plot_attack.py", ("--n-images", "0"), ("--n-images", "positive"), 2),
    # train_model.py: --architecture and --defence
    InProcess(
        "train_model-unknown-architecture",
        "train_model.py",
        ("--architecture", "resnet50"),
        ("argument --architecture", "unknown architecture 'resnet50'", "reference", "cifar-cnn", "resnet18:2"),
        2,
    ),
    InProcess(
        "train_model-architecture-option",
        "train_model.py",
        ("--architecture", "resnet18:7"),
        ("argument --architecture", "resnet18:7", "1, 2, 3"),
        2,
    ),
    InProcess(
        "train_model-unknown-defence",
        "train_model.py",
        ("--defence", "dpsgd:noise=1"),
        ("argument --defence", "unknown defence 'dpsgd'", "laplace, nopeek"),
        2,
    ),
    InProcess(
        "train_model-defence-without-value",
        "train_model.py",
        ("--defence", "laplace:scale"),
        ("argument --defence", "malformed 'laplace:scale'", "key=value"),
        2,
    ),
    InProcess(
        "train_model-defence-not-name-colon",
        "train_model.py",
        ("--defence", "laplace scale=1"),
        ("argument --defence", "malformed defence 'laplace scale=1'", "NAME:key=value"),
        2,
    ),
    InProcess(
        "train_model-defence-unknown-parameter",
        "train_model.py",
        ("--defence", "laplace:sigma=1"),
        ("argument --defence", "'laplace' takes no parameter sigma", "it takes scale"),
        2,
    ),
    InProcess(
        "train_model-defence-negative",
        "train_model.py",
        ("--defence", "nopeek:weight=-1"),
        ("argument --defence", "NoPeek weight must be a non-negative number"),
        2,
    ),
    InProcess(
        "train_model-defence-not-a-number",
        "train_model.py",
        ("--defence", "laplace:scale=big"),
        ("argument --defence", "scale must be float", "'big'"),
        2,
    ),
    InProcess(
        "train_model-flag-and-defence",
        "train_model.py",
        ("--noise-scale", "0.5", "--defence", "laplace:scale=1"),
        ("--noise-scale and --defence laplace", "only one"),
        1,
    ),
    InProcess(
        "train_model-defence-twice",
        "train_model.py",
        ("--defence", "nopeek:weight=0.1", "--defence", "nopeek:weight=0.2"),
        ("defence 'nopeek' is given more than once",),
        1,
    ),
    InProcess(
        "train_model-invalid-combination",
        "train_model.py",
        ("--nopeek-weight", "0.1", "--defence", "toy-per-sample:noise=1"),
        ("toy-per-sample needs per-sample gradients", "nopeek", "couples the samples"),
        1,
        register_per_sample_toy,
    ),
    InProcess(
        "train_model-images-too-small-for-architecture",
        "train_model.py",
        ("--dataset", "tiny-images", "--architecture", "resnet18"),
        ("'resnet18:2' needs images of at least 8×8 pixels", "1×6×6"),
        1,
        register_tiny_images,
    ),
    InProcess(
        "train_model-results-of-unknown-schema",
        "train_model.py",
        (),
        ("train_model.csv", "other columns", "--results-dir"),
        1,
        plant_unknown_table,
    ),
    # train_attacker.py: --attack and --wire
    InProcess(
        "train_attacker-label-only",
        "train_attacker.py",
        ("--model", "any", "--attack", "label-only"),
        ("argument --attack", "'label-only' has nothing to train or save", "choose from best-of, decoder"),
        2,
    ),
    InProcess(
        "train_attacker-unknown-attack",
        "train_attacker.py",
        ("--model", "any", "--attack", "gradient-inversion"),
        ("argument --attack", "unknown attack 'gradient-inversion'", "decoder"),
        2,
    ),
    InProcess(
        "train_attacker-training-defence-on-wire",
        "train_attacker.py",
        ("--model", "any", "--wire", "nopeek:weight=1"),
        ("argument --wire", "'nopeek' puts nothing on the wire"),
        2,
    ),
    InProcess(
        "train_attacker-wire-unknown-parameter",
        "train_attacker.py",
        ("--model", "any", "--wire", "laplace:sigma=2"),
        ("argument --wire", "takes no parameter sigma"),
        2,
    ),
    InProcess(
        "train_attacker-model-noise-and-wire",
        "train_attacker.py",
        ("--model", "any", "--model-noise", "1", "--wire", "laplace:scale=2"),
        ("--model-noise and --wire laplace", "only one"),
        1,
    ),
    InProcess(
        "train_attacker-aux-dataset-of-other-images",
        "train_attacker.py",
        ("--model", "cifar_0noise_0nopeek", "--aux-dataset", "fashion-mnist"),
        ("cifar_0noise_0nopeek_epoch=00.ckpt takes 3×32×32 images", "--aux-dataset 'fashion-mnist' has 1×28×28"),
        1,
        plant_model("cifar_0noise_0nopeek_epoch=00.ckpt", SplitNN(input_shape=(3, 32, 32), dataset="cifar10", seed=0)),
    ),
    InProcess(
        "train_attacker-users-own-modules",
        "train_attacker.py",
        (
            "--model",
            "mine_0noise_0nopeek",
        ),
        ("mine_0noise_0nopeek_epoch=00.ckpt", "the user's own modules", "load_classifier(path, client="),
        1,
        plant_model(
            "mine_0noise_0nopeek_epoch=00.ckpt",
            SplitNN(client=nn.Sequential(nn.Flatten(), nn.Linear(784, 16)), server=nn.Linear(16, 10), seed=0),
        ),
    ),
    # evaluate_models.py: --wire
    InProcess(
        "evaluate_models-training-defence-on-wire",
        "evaluate_models.py",
        ("--wire", "nopeek:weight=0.1"),
        ("argument --wire", "'nopeek' puts nothing on the wire"),
        2,
    ),
    InProcess(
        "evaluate_models-noise-and-wire",
        "evaluate_models.py",
        ("--noise", "1", "--wire", "laplace:scale=1"),
        ("--noise and --wire laplace", "only one"),
        1,
    ),
    InProcess(
        "evaluate_models-model-of-other-images",
        "evaluate_models.py",
        (),
        ("odd_0noise_0nopeek_epoch=00.ckpt takes 1×28×28 images", "its dataset 'cifar10' has 3×32×32"),
        1,
        plant_model("odd_0noise_0nopeek_epoch=00.ckpt", SplitNN(dataset="cifar10", seed=0)),
    ),
]


def run_main(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run ``script``'s ``main`` through :func:`run`, as its command line does; return the exit status."""
    main = runpy.run_path(str(REPO / "scripts" / script))["main"]
    monkeypatch.setattr(sys, "argv", [script])
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    with pytest.raises(SystemExit) as exited:
        run(main, args)
    return exited.value.code


@pytest.mark.parametrize("case", IN_PROCESS, ids=[case.id for case in IN_PROCESS])
def test_registry_flags_bad_input_gives_one_clear_line(case, tmp_path, capsys, monkeypatch):
    ws = Workspace(tmp_path, tmp_path / "data", tmp_path / TINY).create()
    if case.plant:
        case.plant(ws, monkeypatch)
    before = {name: (ws.root / name).read_bytes() for name in ws.planted}
    code = run_main(case.script, [*folder_flags(case.script, ws), *case.args], monkeypatch)
    captured = capsys.readouterr()
    assert code == case.code, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{captured.err[-3000:]}"
    assert lines[0].startswith(f"{case.script}: error: "), lines[0]
    for part in case.expect:
        assert part in lines[0], f"{part!r} is not in the error line: {lines[0]}"
    assert ws.written() == ws.planted, f"files left behind: {sorted(ws.written() - ws.planted)}"
    assert {name: (ws.root / name).read_bytes() for name in ws.planted} == before, "a planted file was changed"


def test_help_lists_the_inversion_attacks_and_which_are_saved(capsys, monkeypatch):
    assert run_main("train_attacker.py", ["--help"], monkeypatch) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the attack to run: best-of, decoder" in out and "whitebox" in out and "label-only" not in out
    assert "(saved: decoder, decoder-label, decoder-large, decoder-ssim)" in out


# --- the shorthand flags and the wire: merge rules ---------------------------------------------


def test_a_defence_replaces_its_flags_default_in_place():
    flags = {"laplace": ("--noise-scale", Laplace(0.0)), "nopeek": ("--nopeek-weight", NoPeek(0.1))}
    merged = merge_defences(flags, [Laplace(0.5), PerSampleToy(1.0)])
    assert merged == [Laplace(0.5), NoPeek(0.1), PerSampleToy(1.0)]
    # The file name keeps the reference's <S>noise_<W>nopeek order, then the other defences.
    assert [spec.key() for spec in merged] == ["05noise", "01nopeek", "toy-per-sample-noise1"]
    assert merge_defences(flags, []) == [Laplace(0.0), NoPeek(0.1)]  # zero strength is still named
    with pytest.raises(ConfigError, match="--nopeek-weight and --defence nopeek"):
        merge_defences(flags, [NoPeek(0.2)])
    # A second --defence of the same name is kept, for validate() to refuse.
    assert merge_defences(flags, [Laplace(0.5), Laplace(1.0)])[-1] == Laplace(1.0)


def test_the_wire_from_its_flags():
    assert wire_from(None, None, "--noise") is None  # the model's own wire
    assert wire_from(0.5, None, "--noise") == [Laplace(0.5)]
    assert wire_from(None, [Laplace(1.0)], "--noise") == [Laplace(1.0)]
    with pytest.raises(ConfigError, match="--noise and --wire laplace"):
        wire_from(0.5, [Laplace(1.0)], "--noise")
    assert (wire_key([]), wire_key([Laplace(0.0)]), wire_key([Laplace(1.0)])) == ("0noise", "0noise", "1noise")


def test_the_wire_an_attacker_attacked():
    assert attacked_wire({"wire": "laplace(scale=0.5)", "noise_scale": 0.5}) == [Laplace(0.5)]
    assert attacked_wire({"wire": "none", "noise_scale": 0.0}) == []
    assert attacked_wire({"noise_scale": 0.25}) == [Laplace(0.25)]  # checkpoints before the wire was recorded


# --- the first schema: old checkpoints and results tables --------------------------------------


def legacy_checkpoint(path: Path, kind: str, hyper_parameters: dict, state_dict: dict) -> Path:
    """A checkpoint as dpsnn wrote it before architectures and defence specs."""
    payload = {
        "dpsnn": {"kind": kind, "format_version": FORMAT_VERSION},
        "hyper_parameters": hyper_parameters,
        "epoch": 0,
        "extra": {},
        "state_dict": state_dict,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_old_attacker_checkpoints_are_evaluated_and_plotted(tmp_path, data_root, monkeypatch, capsys):
    classifiers, attackers = tmp_path / "classifiers", tmp_path / "attackers"
    torch.manual_seed(0)
    target = "old_0noise_01nopeek_epoch=00.ckpt"
    legacy_checkpoint(
        classifiers / target,
        "classifier",
        {"noise_scale": 0.0, "nopeek_weight": 0.1, "learning_rate": 1e-3, "num_classes": 10, "lr_schedule": "constant"}
        | {"dataset": "fashion-mnist", "seed": 0, "train_size": 500},
        SplitNN().state_dict(),
    )
    legacy_checkpoint(
        attackers / "old_0noise_01nopeek_attacker_05noise_fashion-mnist50aux_epoch=00.ckpt",
        "attacker",
        {"learning_rate": 1e-3, "intermediate_size": 500, "target_model": target, "dataset": "fashion-mnist"}
        | {"noise_scale": 0.5, "aux_dataset": "fashion-mnist", "aux_size": 50, "data_seed": 0, "seed": 0},
        InversionAttacker().state_dict(),
    )
    output = tmp_path / "attacks.csv"
    args = [
        *("--attackers-dir", str(attackers), "--classifiers-dir", str(classifiers), "--data-dir", str(data_root)),
        *("--validators-dir", str(tmp_path / "validators"), "--output", str(output), "--test-size", "128"),
        *("--validator-train-size", "256", "--validator-epochs", "1", "--no-progress"),
    ]
    assert run_main("evaluate_attackers.py", args, monkeypatch) == 0, capsys.readouterr().err
    _, (row,) = read_table(output)
    assert (row["defences"], row["wire"], row["attack"]) == ("nopeek(weight=0.1)", "laplace(scale=0.5)", "decoder")
    assert (row["noise_scale"], row["trained_noise_scale"], row["nopeek_weight"]) == ("0.5", "0", "0.1")
    assert 0 <= float(row["attack_ssim_se"]) and 0 <= float(row["attack_validator_acc"]) <= 1

    plot = runpy.run_path(str(REPO / "scripts" / "plot_attack.py"))
    drawn = {}
    # run_path returns a copy of the script's globals: replace the grid where main looks it up.
    plot["main"].__globals__["reconstruction_grid"] = lambda rows, path, title=None: drawn.update(rows) or Path(path)
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    args = [*("--attackers-dir", str(attackers), "--classifiers-dir", str(classifiers), "--data-dir", str(data_root))]
    assert plot["main"]([*args, "--output", str(tmp_path / "grid.png"), "--n-images", "3"]) == 0
    # The row names what the target was trained with and the noise switched on after training.
    assert list(drawn) == ["original", "NoPeek 0.1, wire: noise 0.5\naux 50", "label-only\nbaseline"]
    assert all(images.shape == (3, 1, 28, 28) for images in drawn.values())


def test_a_results_table_of_the_first_schema_is_migrated(tmp_path, data_root, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    old = (
        "model,dataset,seed,noise_scale,nopeek_weight,train_size,epoch,n_val,val_accuracy,val_accuracy_se,"
        "val_dcor,val_dcor_se\nold_05noise_0nopeek_epoch=02.ckpt,fashion-mnist,0,0.5,0,50000,2,5000,0.9,0.004,0.8,0.01\n"
    )
    (results / "train_model.csv").write_text(old)
    args = [
        *("--train-size", "256", "--val-size", "256", "--max-epochs", "1", "--defence", "nopeek:weight=0.2"),
        *("--saveas", "new", "--models-dir", str(tmp_path / "classifiers"), "--results-dir", str(results)),
        *("--data-dir", str(data_root), "--no-progress"),
    ]
    assert run_main("train_model.py", args, monkeypatch) == 0, capsys.readouterr().err
    assert f"migrated 1 earlier row of {results / 'train_model.csv'} to its new columns" in capsys.readouterr().out
    header, (first, second) = read_table(results / "train_model.csv")
    assert header[:4] == ["model", "dataset", "architecture", "defences"] and header[-1] == "measures"
    assert (first["model"], first["architecture"], first["defences"]) == (
        "old_05noise_0nopeek_epoch=02.ckpt",
        "reference",
        "laplace(scale=0.5)",
    )
    assert (first["val_accuracy"], first["measures"]) == ("0.9", "{}")
    assert second["model"] == "new_0noise_02nopeek_epoch=00.ckpt" and second["defences"] == "nopeek(weight=0.2)"
    assert (tmp_path / "classifiers" / second["model"]).is_file()


def test_an_attack_table_row_of_the_first_schema_is_upgraded():
    upgrade = runpy.run_path(str(REPO / "scripts" / "train_attacker.py"))["upgrade_legacy_row"]
    old = {"attacker": "a.ckpt", "target": "t.ckpt", "dataset": "fashion-mnist", "noise_scale": "1"}
    old |= {"nopeek_weight": "0.1", "aux_dataset": "mnist", "aux_size": "500", "seed": "0", "attack_mse": "0.03"}
    row = upgrade(old)
    assert (row["wire"], row["attack"], row["architecture"]) == ("laplace(scale=1)", "decoder", "reference")
    assert row["defences"] == "" and row["attack_mse"] == "0.03"  # the target's defences were not recorded
    assert list(row)[:7] == ["attacker", "target", "dataset", "architecture", "defences", "wire", "attack"]


def test_grid_row_labels_name_the_defences_the_wire_and_the_architecture():
    row_label = runpy.run_path(str(REPO / "scripts" / "plot_attack.py"))["row_label"]
    plain = SplitNN()
    defended = SplitNN(defences=["laplace:scale=0.5", "nopeek:weight=0.1"])
    assert row_label(plain, plain.wire_defences, 10) == "no defence\naux 10"
    assert row_label(defended, defended.wire_defences, 10) == "noise 0.5 + NoPeek 0.1\naux 10"
    assert row_label(plain, [Laplace(1.0)], 10) == "no defence, wire: noise 1\naux 10"
    cifar = SplitNN("cifar-cnn", input_shape=(3, 32, 32), defences=["nopeek:weight=0.2"])
    assert row_label(cifar, [], 5) == "cifar-cnn: NoPeek 0.2\naux 5"


def test_white_box_inversion_runs_from_train_attacker_and_is_scored_not_saved(tmp_path, data_root, monkeypatch, capsys):
    classifiers, attackers, results = tmp_path / "classifiers", tmp_path / "attackers", tmp_path / "results"
    torch.manual_seed(0)
    model = SplitNN(dataset="fashion-mnist", seed=0, train_size=500, val_size=100, aux_size=64)
    save_checkpoint(model, classifiers / "tiny_epoch=00.ckpt", "classifier", 0)
    args = [
        *("--model", "tiny", "--attack", "whitebox:steps=3", "--test-size", "16", "--aux-size", "64"),
        *("--classifiers-dir", str(classifiers), "--models-dir", str(attackers), "--results-dir", str(results)),
        *("--data-dir", str(data_root), "--no-progress"),
    ]
    assert run_main("train_attacker.py", args, monkeypatch) == 0, capsys.readouterr().err
    assert "has no weights of its own: scored, not saved" in capsys.readouterr().out
    _, (row,) = read_table(results / "train_attacker.csv")
    assert row["attacker"] == "" and row["attack"].startswith("whitebox(steps=3")
    assert 0 <= float(row["attack_mse"]) <= 1 and float(row["attack_ssim_se"]) >= 0
    assert not attackers.exists() or not any(attackers.iterdir())


def test_a_membership_attack_is_sent_to_membership_inference(monkeypatch, capsys):
    assert run_main("train_attacker.py", ["--model", "any", "--attack", "lira"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a membership attack: run it with membership_inference.py" in err[0]
