"""A small run on real Fashion-MNIST images, through the library and through the scripts."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpsnn.data import make_splits
from dpsnn.evaluation import evaluate_attack, evaluate_classifier
from dpsnn.training import train_attacker, train_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def splits(data_root):
    return make_splits("fashion-mnist", seed=0, train_size=4000, test_size=1000, root=data_root)


def test_undefended_attacker_beats_the_label_only_baseline(splits):
    target, _ = train_classifier(splits, noise_scale=0.0, nopeek_weight=0.0, max_epochs=2, seed=0, progress=False)
    utility = evaluate_classifier(target, splits.test)
    assert utility["accuracy"] > 0.7
    attacker = train_attacker(target, splits.aux.images[:2000], max_epochs=8, seed=0, progress=False)
    row = evaluate_attack(target, attacker, splits.test, splits.aux.subset(2000))
    # The attack recovers more than the label: clearly better SSIM and MSE than the class means.
    assert row["gap_ssim"] > 0.05 and row["gap_ssim"] > 5 * row["gap_ssim_se"]
    assert row["gap_mse"] < 0 and -row["gap_mse"] > 5 * row["gap_mse_se"]
    assert row["attack_dcor"] > row["baseline_dcor"]


def test_training_is_deterministic_for_a_seed(splits):
    small = type(splits)(**{**splits.__dict__, "train": splits.train.subset(256), "val": splits.val.subset(256)})
    first, _ = train_classifier(small, noise_scale=0.3, nopeek_weight=0.2, max_epochs=1, seed=5, progress=False)
    second, _ = train_classifier(small, noise_scale=0.3, nopeek_weight=0.2, max_epochs=1, seed=5, progress=False)
    other, _ = train_classifier(small, noise_scale=0.3, nopeek_weight=0.2, max_epochs=1, seed=6, progress=False)
    weight = "client.6.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPSNN_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_scripts_end_to_end(tmp_path, data_root):
    models, results = tmp_path / "models", tmp_path / "results"
    data = ["--data-dir", str(data_root)]
    trained = run_script(
        "train_model.py",
        *("--noise-scale", "0.5", "--nopeek-weight", "0.1", "--train-size", "600", "--max-epochs", "1"),
        *("--saveas", "e2e", "--models-dir", str(models / "classifiers"), "--results-dir", str(results)),
        *data,
        "--no-progress",
    )
    assert "val accuracy:" in trained.stdout and "±" in trained.stdout
    (checkpoint,) = (models / "classifiers").glob("e2e_05noise_01nopeek_epoch=*.ckpt")
    (training_row,) = read_csv(results / "train_model.csv")
    assert float(training_row["val_accuracy_se"]) > 0 and training_row["model"] == checkpoint.name

    folders = [
        *("--classifiers-dir", str(models / "classifiers")),
        *("--attackers-dir", str(models / "attackers")),
    ]
    attacked = run_script(
        "train_attacker.py",
        *("--model", "e2e_05noise_01nopeek", "--aux-size", "300", "--max-epochs", "2", "--test-size", "500"),
        *("--classifiers-dir", str(models / "classifiers"), "--models-dir", str(models / "attackers")),
        *("--results-dir", str(results), *data, "--no-progress"),
    )
    assert "ssim" in attacked.stdout
    (attacker,) = (models / "attackers").glob("*.ckpt")
    assert attacker.name.startswith("e2e_05noise_01nopeek_attacker_05noise_fashion-mnist300aux")

    run_script(
        "evaluate_models.py",
        *("--classifiers-dir", str(models / "classifiers"), "--output", str(results / "models.csv")),
        *("--test-size", "500", *data),
    )
    (model_row,) = read_csv(results / "models.csv")
    assert {"accuracy", "accuracy_se", "dcor", "dcor_se"} <= model_row.keys()
    assert model_row["noise_scale"] == "0.5" and model_row["n_test"] == "500"

    run_script(
        "evaluate_attackers.py",
        *folders,
        *("--validators-dir", str(models / "validators"), "--output", str(results / "attacks.csv")),
        *("--test-size", "500", "--validator-train-size", "1000", "--validator-epochs", "1", *data, "--no-progress"),
    )
    (attack_row,) = read_csv(results / "attacks.csv")
    for side in ("attack", "baseline", "gap"):
        for metric in ("mse", "psnr", "ssim", "dcor", "validator_acc"):
            assert f"{side}_{metric}" in attack_row and attack_row[f"{side}_{metric}_se"] != ""
    assert len(list((models / "validators").glob("*.ckpt"))) == 1

    figure = results / "figures" / "grid.png"
    run_script("plot_attack.py", *folders, "--output", str(figure), "--n-images", "4", *data)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
