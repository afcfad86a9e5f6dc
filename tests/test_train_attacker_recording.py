"""train_attacker.py --from-recording: a decoder trained on what a server recorded, and DecoderAttack.fit_pairs.

The recording is written here with :class:`RecordingWriter` from a small SplitNN (untrained:
the plumbing is checked, not the numbers), as the server of a two-party run writes it: its
own queries of auxiliary images through the client, and the client's inference queries of
the first test images of the run's dataset.
"""

from __future__ import annotations

import csv
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from dpsnn import SplitNN
from dpsnn.attacks import AttackTraining, make_attack, observe
from dpsnn.attacks.baseline import LabelOnlyBaseline
from dpsnn.checkpoints import load_attacker
from dpsnn.cli import run
from dpsnn.data import make_splits
from dpsnn.errors import ConfigError, DataError
from dpsnn.transport.recording import Recording, RecordingWriter

REPO = Path(__file__).resolve().parents[1]
N_QUERIES, N_INFERENCE = 64, 40
SEED = 3
ONE_STEP = AttackTraining(max_steps=1, batch_size=16, progress=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def metadata(model: SplitNN) -> dict[str, str]:
    return {
        "dataset": "fashion-mnist",
        "seed": str(SEED),
        "architecture": model.hparams["architecture"],
        "defences": model.trained_with(),
        "wire": "laplace(scale=0.5)",
        "input_shape": "1,28,28",
        "num_classes": "10",
        "val_size": "5000",
        "aux_split_size": "5000",
        "train_size": "",
    }


def write_recording(folder: Path, model: SplitNN, data_root: Path, phases: tuple[str, ...]) -> Path:
    """What the server of a run of ``model`` records of ``phases`` (train, queries, inference)."""
    splits = make_splits("fashion-mnist", seed=SEED, test_size=N_INFERENCE, root=data_root)
    writer = RecordingWriter(folder, metadata(model))
    if "train" in phases:
        seen = observe(model, splits.train.images[:32], seed=0).seen
        writer.add(
            "train", 0, activation=seen, labels=splits.train.labels[:32], batch=torch.zeros(32, dtype=torch.long)
        )
        writer.flush("train", 0)
    if "queries" in phases:
        aux = splits.aux.subset(N_QUERIES)
        observation = observe(model, aux.images, seed=1)
        pairs = {"images": aux.images, "labels": aux.labels, "activation": observation.seen}
        writer.add("queries", **pairs, predicted=observation.predicted)
        writer.flush("queries")
    if "inference" in phases:
        observation = observe(model, splits.test.images, seed=2)
        writer.add("inference", activation=observation.seen, predicted=observation.predicted)
        writer.flush("inference")
    return folder


@pytest.fixture(scope="module")
def model() -> SplitNN:
    torch.manual_seed(0)
    return SplitNN(defences=["laplace:scale=0.5", "nopeek:weight=0.1"], dataset="fashion-mnist", seed=SEED).eval()


@pytest.fixture(scope="module")
def recording(tmp_path_factory, model, data_root) -> Path:
    return write_recording(
        tmp_path_factory.mktemp("rec") / "split", model, data_root, ("train", "queries", "inference")
    )


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """train_attacker.py's ``main`` through :func:`run`, as its command line runs it; the exit status."""
    main = runpy.run_path(str(REPO / "scripts" / "train_attacker.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["train_attacker.py"])
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    with pytest.raises(SystemExit) as exited:
        run(main, args)
    return exited.value.code


def folders(tmp_path: Path, data_root: Path) -> list[str]:
    results, models = tmp_path / "results", tmp_path / "models"
    return ["--results-dir", str(results), "--models-dir", str(models), "--data-dir", str(data_root), "--no-progress"]


def written(tmp_path: Path) -> list[Path]:
    return sorted(path for path in tmp_path.rglob("*") if path.is_file())


@pytest.mark.parametrize("attack", ["decoder", "decoder-label"])
def test_an_attack_trains_on_the_recorded_queries_and_scores_on_the_inference(
    attack, recording, data_root, tmp_path, monkeypatch, capsys
):
    args = ["--from-recording", str(recording), "--attack", attack, "--aux-size", "48", "--test-size", "32"]
    code = run_main([*args, "--max-epochs", "1", "--batch-size", "16", *folders(tmp_path, data_root)], monkeypatch)
    assert code == 0, capsys.readouterr().err
    path = tmp_path / "models" / f"split_recorded_attacker_{attack}_48aux_epoch=00.ckpt"
    assert path.is_file()
    attacker = load_attacker(path)
    assert attacker.hparams["intermediate_shape"] == [500] and attacker.hparams["target_model"] == "split"
    assert attacker.hparams["num_classes"] == (10 if attack == "decoder-label" else 0)
    assert (attacker.hparams["wire"], attacker.hparams["noise_scale"]) == ("laplace(scale=0.5)", 0.5)
    with (tmp_path / "results" / "train_attacker.csv").open() as file:
        (row,) = list(csv.DictReader(file))
    assert (row["target"], row["attacker"], row["attack"]) == ("split", path.name, attack)
    assert (row["wire"], row["defences"]) == ("laplace(scale=0.5)", "laplace(scale=0.5)+nopeek(weight=0.1)")
    assert (float(row["noise_scale"]), float(row["nopeek_weight"])) == (0.5, 0.1)
    assert (row["aux_dataset"], row["aux_size"], row["seed"]) == ("fashion-mnist", "48", str(SEED))
    assert (int(row["n_test"]), int(row["n_aux_baseline"])) == (32, 48)
    assert math.isfinite(float(row["attack_ssim"])) and math.isfinite(float(row["gap_ssim"]))
    # The baseline guesses the class means of the queries; scored against the first 32 test images of the run.
    test = make_splits("fashion-mnist", seed=SEED, test_size=32, root=data_root).test
    queries, predicted = Recording(recording).read("queries"), Recording(recording).read("inference")["predicted"]
    guesses = LabelOnlyBaseline.fit(queries["images"][:48], queries["labels"][:48], 10)(predicted[:32])
    expected = ((guesses - test.images) ** 2).flatten(1).mean(1).mean().item()
    assert float(row["baseline_mse"]) == pytest.approx(expected, rel=1e-5)
    out = capsys.readouterr().out
    assert f"saved {path}" in out and "scored on 32 test images" in out
    assert "target trained with noise 0.5 + NoPeek 0.1; wire: noise 0.5" in out


def no_queries(tmp_path: Path, model: SplitNN, data_root: Path) -> list[str]:
    return ["--from-recording", str(write_recording(tmp_path / "rec", model, data_root, ("train", "inference")))]


def not_a_recording(tmp_path: Path, model: SplitNN, data_root: Path) -> list[str]:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a recording")
    return ["--from-recording", str(tmp_path / "notes")]


def recorded(*extra: str):
    return lambda tmp_path, model, data_root, recording: ["--from-recording", str(recording), *extra]


BAD = {
    "not-a-recording": (lambda t, m, d, r: not_a_recording(t, m, d), 1, ("notes", "holds no recording")),
    "no-queries": (lambda t, m, d, r: no_queries(t, m, d), 1, ("no queries phase", "split.py server --queries N")),
    "whitebox": (recorded("--attack", "whitebox"), 1, ("'whitebox'", "only what the server received", "decoder")),
    "best-of": (recorded("--attack", "best-of"), 1, ("'best-of'", "only what the server received")),
    "and-model": (recorded("--model", "demo_0noise_0nopeek"), 2, ("--from-recording", "not allowed with", "--model")),
    "neither": (lambda t, m, d, r: [], 1, ("--model", "--from-recording", "required")),
    "with-wire": (recorded("--wire", "laplace:scale=1"), 1, ("--wire cannot be used with --from-recording",)),
    "with-classifiers-dir": (recorded("--classifiers-dir", "models"), 1, ("--classifiers-dir cannot be used",)),
    "aux-too-large": (recorded("--aux-size", "65"), 1, ("--aux-size 65", "recorded queries (64 images)")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_and_writes_nothing(case, recording, model, data_root, tmp_path, monkeypatch, capsys):
    make_args, status, expected = BAD[case]
    args = make_args(tmp_path, model, data_root, recording)
    before = written(tmp_path)
    code = run_main([*args, "--max-epochs", "1", *folders(tmp_path, data_root)], monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == status and len(lines) == 1, lines
    assert lines[0].startswith("train_attacker.py: error: "), lines[0]
    for part in expected:
        assert part in lines[0], f"{part!r} is not in: {lines[0]}"
    assert written(tmp_path) == before


def test_fit_pairs_needs_the_predicted_labels_for_a_conditioned_attack(model, data_root):
    images = make_splits("fashion-mnist", seed=SEED, test_size=1, root=data_root).aux.images[:16]
    seen = observe(model, images).seen
    with pytest.raises(ConfigError, match="'decoder-label' is conditioned on the label the server predicts"):
        make_attack("decoder-label").fit_pairs(seen, images, ONE_STEP)
    with pytest.raises(DataError, match="15 recorded intermediates for 16 images"):
        make_attack("decoder").fit_pairs(seen[:15], images, ONE_STEP)
    with pytest.raises(DataError, match="outside 0..9"):
        make_attack("decoder-label").fit_pairs(seen, images, ONE_STEP, predicted=torch.full((16,), 10))
    first = make_attack("decoder").fit_pairs(seen, images, ONE_STEP, seed=1, note="x")
    second = make_attack("decoder").fit_pairs(seen, images, ONE_STEP, seed=1)
    assert first.hparams["note"] == "x" and first.hparams["num_classes"] == 0
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
