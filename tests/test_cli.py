"""Bad input to the scripts: one clear line on stderr, a non-zero exit, no traceback, nothing written.

Every script runs as a subprocess from the repository root with DPSNN_OFFLINE=1 and all of its
folders pointed into a temporary workspace. Starting a script costs seconds (torch and Lightning
are imported), so one module fixture runs them all, two at a time, and each test checks one outcome.
"""

from __future__ import annotations

import os
import random
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from dpsnn import InversionAttacker, SplitNN
from dpsnn.checkpoints import FORMAT_VERSION, save_checkpoint
from dpsnn.cli import run
from dpsnn.data import make_splits
from dpsnn.training import train_classifier

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny_0noise_0nopeek_epoch=00.ckpt"
STUB = "demo_0noise_0nopeek_epoch=00.ckpt"
WORKERS = 2  # more processes than cores make every start-up slower


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


def plant_other_architecture(ws: Workspace) -> None:
    model = SplitNN(client=other_client(), dataset="fashion-mnist", seed=0)
    save_checkpoint(model, ws.inputs / "other_0noise_0nopeek_epoch=00.ckpt", "classifier", 0)


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
    Case("train_model-negative-noise", "train_model.py", fixed("--noise-scale", "-1"), fixed("--noise-scale", "'-1'")),
    Case("train_model-text-noise", "train_model.py", fixed("--noise-scale", "abc"), fixed("--noise-scale", "'abc'")),
    Case(
        "train_model-negative-nopeek",
        "train_model.py",
        fixed("--nopeek-weight", "-0.5"),
        fixed("--nopeek-weight", "'-0.5'"),
    ),
    Case("train_model-nan-nopeek", "train_model.py", fixed("--nopeek-weight", "nan"), fixed("--nopeek-weight", "nan")),
    Case(
        "train_model-unknown-dataset",
        "train_model.py",
        fixed("--dataset", "unknown-name"),
        fixed("unknown-name", "fashion-mnist", "mnist"),
    ),
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
    Case("train_model-zero-epochs", "train_model.py", fixed("--max-epochs", "0"), fixed("--max-epochs", "positive")),
    Case(
        "train_model-unknown-schedule",
        "train_model.py",
        fixed("--lr-schedule", "cosine"),
        fixed("--lr-schedule", "one-cycle"),
    ),
    # train_attacker.py
    Case("train_attacker-no-model", "train_attacker.py", fixed(), fixed("--model", "required")),
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
    Case(
        "train_attacker-negative-model-noise",
        "train_attacker.py",
        fixed("--model", "demo_0noise_0nopeek", "--model-noise", "-1"),
        fixed("--model-noise", "'-1'"),
        plant_stub,
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
    Case("evaluate_models-negative-noise", "evaluate_models.py", fixed("--noise", "-2"), fixed("--noise", "'-2'")),
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
    Case("plot_attack-zero-images", "plot_attack.py", fixed("--n-images", "0"), fixed("--n-images", "positive")),
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
    ],
    "train_attacker.py": ["--model", "--model-noise", "--aux-dataset", "--aux-size", "--max-epochs"],
}


# --- running them ------------------------------------------------------------------------------


def run_script(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPSNN_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case and every --help, run on a small pool: id -> (workspace, completed process).

    The cases that need a trained classifier are started once it is trained, which happens while
    the other cases run.
    """
    data_dir = tmp_path_factory.mktemp("data")  # shared by every case, Fashion-MNIST unpacked once
    splits = make_splits("fashion-mnist", seed=0, train_size=500, root=data_dir)
    tiny = tmp_path_factory.mktemp("tiny") / TINY
    results = {}

    def start(pool: ThreadPoolExecutor, cases: list[Case]) -> None:
        for case in cases:
            ws = Workspace(tmp_path_factory.mktemp(case.id), data_dir, tiny).create()
            if case.plant:
                case.plant(ws)
            args = [*folder_flags(case.script, ws), *case.args(ws)]
            results[case.id] = (ws, pool.submit(run_script, case.script, args))

    with ThreadPoolExecutor(WORKERS) as pool:
        start(pool, [case for case in CASES if case.plant is not plant_tiny])
        for script in HELP:
            results[f"help-{script}"] = (None, pool.submit(run_script, script, ["--help"]))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # leave the other core to the scripts
        try:
            model, _ = train_classifier(splits, max_epochs=1, seed=0, progress=False)
        finally:
            torch.set_num_threads(threads)
        save_checkpoint(model, tiny, "classifier", 0)
        start(pool, [case for case in CASES if case.plant is plant_tiny])
        return {key: (ws, future.result()) for key, (ws, future) in results.items()}


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
    ours = SplitNN(client=other_client()).state_dict()
    default = SplitNN().state_dict()
    assert ours.keys() == default.keys()
    assert any(ours[key].shape != default[key].shape for key in ours)


@pytest.mark.parametrize("script", sorted(HELP))
def test_help_lists_the_flags(script, outcomes):
    _, result = outcomes[f"help-{script}"]
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in HELP[script]:
        # --model must be there on its own, not only as the start of --model-noise
        assert re.search(rf"{re.escape(flag)}(?![\w-])", result.stdout), f"{flag} is missing from {script} --help"
