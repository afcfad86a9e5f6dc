"""Small runs end to end, through the library and through the scripts.

On real Fashion-MNIST images (1×28×28, the reference network), and on a small CIFAR-10
written in CIFAR's real on-disk format (3×32×32: a ResNet-18 split through every script,
and a split of the user's own modules through the library).
"""

import csv
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from cifar_format import write_cifar_dataset
from torch import nn

from dpsnn.attacks import AttackTraining, DecoderAttack
from dpsnn.checkpoints import load_attacker, load_classifier, save_checkpoint
from dpsnn.data import make_splits
from dpsnn.errors import CheckpointError, ConfigError
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
    assert training_row["architecture"] == "reference"
    assert training_row["defences"] == "laplace(scale=0.5)+nopeek(weight=0.1)"

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
    assert load_attacker(attacker).hparams["wire"] == "laplace(scale=0.5)"  # the model's own wire

    run_script(
        "evaluate_models.py",
        *("--classifiers-dir", str(models / "classifiers"), "--output", str(results / "models.csv")),
        *("--test-size", "500", *data),
    )
    (model_row,) = read_csv(results / "models.csv")
    assert {"accuracy", "accuracy_se", "dcor", "dcor_se"} <= model_row.keys()
    assert model_row["noise_scale"] == "0.5" and model_row["n_test"] == "500"
    assert model_row["wire"] == "laplace(scale=0.5)" and model_row["defences"] == training_row["defences"]

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


# --- 3×32×32: a small CIFAR-10 in its real on-disk format ------------------------------------

CIFAR_VAL = 128  # dCor is measured over batches of 256, and a batch needs at least half of that
CIFAR_AUX_SPLIT = 80
CIFAR_TRAIN = 120
CIFAR_TEST = 128


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """A data folder holding only a small CIFAR-10, as python-version batches written by Python 2's pickle."""
    root = tmp_path_factory.mktemp("cifar-data")
    write_cifar_dataset(root, "cifar10", train_count=CIFAR_VAL + CIFAR_AUX_SPLIT + CIFAR_TRAIN, test_count=CIFAR_TEST)
    return root


def script_main(name: str):
    """A script's ``main(argv)``, run in this process (no interpreter start-up per script)."""
    return runpy.run_path(str(REPO / "scripts" / name))["main"]


def finite(row: dict[str, str], *columns: str) -> list[float]:
    values = [float(row[column]) for column in columns]
    assert all(math.isfinite(value) for value in values), {column: row[column] for column in columns}
    return values


def test_cifar_resnet18_split_through_every_script(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    classifiers, attackers, results = tmp_path / "classifiers", tmp_path / "attackers", tmp_path / "results"
    data = ["--data-dir", str(cifar_root)]

    trained = script_main("train_model.py")(
        [
            *("--dataset", "cifar10", "--architecture", "resnet18:2", "--max-epochs", "1", "--batch-size", "32"),
            *("--val-size", str(CIFAR_VAL), "--aux-split-size", str(CIFAR_AUX_SPLIT)),
            *("--train-size", str(CIFAR_TRAIN), "--defence", "laplace:scale=0.5", "--nopeek-weight", "0.1"),
            *("--saveas", "cifar", "--models-dir", str(classifiers), "--results-dir", str(results), *data),
            "--no-progress",
        ]
    )
    assert trained == 0
    (checkpoint,) = classifiers.glob("*.ckpt")
    assert checkpoint.name == "cifar_resnet18-2_05noise_01nopeek_epoch=00.ckpt"
    model = load_classifier(checkpoint)
    assert model.hparams["input_shape"] == [3, 32, 32] and model.hparams["architecture"] == "resnet18:2"
    assert (model.hparams["val_size"], model.hparams["aux_split_size"]) == (CIFAR_VAL, CIFAR_AUX_SPLIT)
    (row,) = read_csv(results / "train_model.csv")
    assert (row["architecture"], row["defences"]) == ("resnet18:2", "laplace(scale=0.5)+nopeek(weight=0.1)")
    assert row["measures"] == "{}" and int(row["n_val"]) == CIFAR_VAL and int(row["train_size"]) == CIFAR_TRAIN
    accuracy, dcor = finite(row, "val_accuracy", "val_dcor")
    assert 0 <= accuracy <= 1 and 0 <= dcor <= 1

    attacked = script_main("train_attacker.py")(
        [
            *("--model", "cifar_resnet18-2", "--wire", "laplace:scale=1", "--aux-size", "64", "--max-epochs", "1"),
            *("--batch-size", "32", "--classifiers-dir", str(classifiers), "--models-dir", str(attackers)),
            *("--results-dir", str(results), *data, "--no-progress"),
        ]
    )
    assert attacked == 0
    (attacker_path,) = attackers.glob("*.ckpt")
    assert attacker_path.name == "cifar_resnet18-2_05noise_01nopeek_attacker_1noise_cifar1064aux_epoch=00.ckpt"
    attacker = load_attacker(attacker_path)
    assert attacker.hparams["intermediate_shape"] == [128, 16, 16]  # resnet18 cut after stage 2: a feature map
    assert attacker.hparams["image_shape"] == [3, 32, 32]
    assert (attacker.hparams["wire"], attacker.hparams["noise_scale"]) == ("laplace(scale=1)", 1.0)
    (row,) = read_csv(results / "train_attacker.csv")
    assert (row["wire"], row["attack"], row["defences"]) == ("laplace(scale=1)", "decoder", model.trained_with())
    assert int(row["n_test"]) == CIFAR_TEST
    mse, ssim, dcor = finite(row, "attack_mse", "attack_ssim", "attack_dcor")
    assert 0 <= mse <= 1 and -1 <= ssim <= 1 and 0 <= dcor <= 1

    evaluated = script_main("evaluate_models.py")(
        ["--classifiers-dir", str(classifiers), "--output", str(results / "models.csv"), "--noise", "0.25", *data]
    )
    assert evaluated == 0
    (row,) = read_csv(results / "models.csv")
    assert (row["wire"], row["defences"], row["architecture"]) == (
        "laplace(scale=0.25)",
        model.trained_with(),
        "resnet18:2",
    )
    accuracy, dcor = finite(row, "accuracy", "dcor")
    assert 0 <= accuracy <= 1 and 0 <= dcor <= 1 and int(row["n_test"]) == CIFAR_TEST

    scored = script_main("evaluate_attackers.py")(
        [
            *("--attackers-dir", str(attackers), "--classifiers-dir", str(classifiers)),
            *("--validators-dir", str(tmp_path / "validators"), "--output", str(results / "attacks.csv")),
            *("--validator-train-size", str(CIFAR_TRAIN), "--validator-epochs", "1", *data, "--no-progress"),
        ]
    )
    assert scored == 0
    (row,) = read_csv(results / "attacks.csv")
    assert (row["wire"], row["trained_noise_scale"], row["noise_scale"]) == ("laplace(scale=1)", "0.5", "1")
    for side in ("attack", "baseline"):
        mse, psnr, ssim, dcor, validator_acc = finite(
            row, *(f"{side}_{m}" for m in ("mse", "psnr", "ssim", "dcor", "validator_acc"))
        )
        assert 0 <= mse <= 1 and psnr > 0 and -1 <= ssim <= 1 and 0 <= dcor <= 1 and 0 <= validator_acc <= 1
    finite(row, *(f"gap_{m}" for m in ("mse", "psnr", "ssim", "dcor", "validator_acc")))

    figure = results / "grid.png"
    plotted = script_main("plot_attack.py")(
        [
            *("--attackers-dir", str(attackers), "--classifiers-dir", str(classifiers)),
            *("--output", str(figure), "--n-images", "4", *data),
        ]
    )
    assert plotted == 0
    pixels = matplotlib.image.imread(figure)
    assert pixels.ndim == 3 and pixels.shape[2] >= 3
    # CIFAR's images are drawn in colour: somewhere the red, green and blue values differ.
    assert (abs(pixels[..., 0] - pixels[..., 1]) > 0.2).any()


class TinyClient(nn.Sequential):
    """A user's own client: one strided convolution, a 6×16×16 feature map on the wire."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1), nn.ReLU())


class TinyServer(nn.Sequential):
    """A user's own server for :class:`TinyClient`'s feature map."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(6, 12, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(12, 10),
        )


def test_users_own_split_trains_saves_reloads_and_is_attacked(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv("DPSNN_OFFLINE", "1")
    splits = make_splits("cifar10", seed=0, val_size=CIFAR_VAL, aux_size=CIFAR_AUX_SPLIT, root=cifar_root)
    model, epoch = train_classifier(
        splits,
        client=TinyClient(),
        server=TinyServer(),
        defences=["laplace:scale=0.1"],
        max_epochs=1,
        batch_size=32,
        progress=False,
    )
    assert model.hparams["architecture"] == "custom" and model.trained_with() == "laplace(scale=0.1)"
    path = save_checkpoint(model, tmp_path / "mine.ckpt", "classifier", epoch)

    with pytest.raises(CheckpointError, match="load_classifier\\(path, client=my_client, server=my_server\\)"):
        load_classifier(path)
    loaded = load_classifier(path, client=TinyClient(), server=TinyServer())
    assert loaded.trained_with() == model.trained_with()
    images = splits.test.images[:16]
    with torch.no_grad():
        torch.manual_seed(3)
        expected = model(images)
        torch.manual_seed(3)  # the same noise on the wire
        assert torch.equal(loaded(images), expected)
        loaded.set_wire([])
        model.set_wire([])
        assert torch.equal(loaded(images), model(images))
        assert not torch.equal(loaded(images), expected)  # the noise was on the wire

    loaded.set_wire(["laplace:scale=0.1"])
    attacker = DecoderAttack().fit(loaded, splits.aux, AttackTraining(batch_size=32, max_epochs=1, progress=False))
    assert attacker.hparams["intermediate_shape"] == [6, 16, 16]
    row = evaluate_attack(loaded, attacker, splits.test, splits.aux)
    assert row["n_test"] == CIFAR_TEST
    for side in ("attack", "baseline", "gap"):
        for metric in ("mse", "psnr", "ssim", "dcor"):
            assert math.isfinite(row[f"{side}_{metric}"]), (side, metric)
    assert 0 <= row["attack_mse"] <= 1 and -1 <= row["attack_ssim"] <= 1 and 0 <= row["attack_dcor"] <= 1


def test_keep_last_keeps_the_last_epoch_and_best_the_best(splits):
    small = type(splits)(**{**splits.__dict__, "train": splits.train.subset(256), "val": splits.val.subset(256)})
    common = {"architecture": "mlp", "max_epochs": 3, "seed": 2, "progress": False}
    last, last_epoch = train_classifier(small, keep="last", **common)
    best, best_epoch = train_classifier(small, **common)
    assert last_epoch == 2 and 0 <= best_epoch <= 2
    same = torch.equal(last.state_dict()["client.1.weight"], best.state_dict()["client.1.weight"])
    assert same == (best_epoch == 2)  # the same run; only the kept epoch differs
    with pytest.raises(ConfigError, match="keep must be one of best, last"):
        train_classifier(small, keep="first", **common)
