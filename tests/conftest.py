"""Fixtures and helpers shared by several test modules."""

import csv
import os
from pathlib import Path

import pytest
import torch

from dpsnn.experiments.runner import ExperimentRunner
from dpsnn.experiments.store import RUNS_FILE, V1_COLUMNS
from dpsnn.experiments.suites import QUICK, customised

# `make test` spreads the test files over the cores (pytest-xdist, one worker each): a worker keeps to one torch
# thread, and so do the scripts and kernels it starts, so that the workers do not stall each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# A budget small enough for tests: it checks the plumbing of the runner, not the numbers.
TINY_BUDGET = dict(
    train_size=256, val_size=256, model_epochs=1, attack_steps=4, aux_size=200, test_size=300, validator_train_size=512
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: its models are tiny, and two threads stall each other when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A private data folder: the datasets are unpacked into it from the system copy."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_runner(data_root):
    """Make an :class:`ExperimentRunner` on the tiny budget (``overrides`` change it), its files under ``folder``."""

    def make(folder: Path, **overrides: int) -> ExperimentRunner:
        return ExperimentRunner(
            customised(QUICK, **{**TINY_BUDGET, **overrides}),
            "fashion-mnist",
            folder / "results",
            folder / "models",
            data_dir=data_root,
            validators_dir=folder / "validators",
            progress=False,
        )

    return make


# Settings of a schema-1 table: noise_scale, nopeek_weight, wire_noise, aux_source, aux_size, test_classes.
V1_SETTINGS = [
    ("0", "0", "0", "same", "5000", "all"),
    ("0.5", "0.25", "0.5", "same", "5000", "all"),
    ("0", "0", "2", "same", "5000", "all"),  # noise switched on after training
    ("0", "0", "0", "other-classes", "2500", "lower-half"),
    ("0", "0", "0", "same", "100", "all"),
]
V1_SUITES = ["plain noise nopeek combo post-noise data-volume", "combo", "post-noise", "aux-shift", "data-volume"]
V1_SETTING_COLUMNS = ("noise_scale", "nopeek_weight", "wire_noise", "aux_source", "aux_size", "test_classes")


def write_v1_table(folder: Path) -> list[dict[str, str]]:
    """A schema-1 ``runs.csv`` in the exact layout of earlier versions, and two kept samples; return its rows.

    The numbers are odd-looking text (``1e-05``, ``-0.0350979``) so that carrying them over
    unchanged can be checked as text.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, setting in enumerate(V1_SETTINGS):
        noise, nopeek, wire, source, size, test = setting
        key = f"fashion-mnist_seed0_{noise}noise_{nopeek}nopeek_{wire}wire_{source}{size}aux_{test}test"
        key = key.replace(".", "")
        row = dict.fromkeys(V1_COLUMNS, "") | dict(zip(V1_SETTING_COLUMNS, setting, strict=True))
        row |= {"schema_version": "1", "key": key, "status": "ok", "budget": "full", "suites": V1_SUITES[index]}
        row |= {"seed": "0"}
        row |= {"dataset": "fashion-mnist", "n_aux": size, "n_test": "10000", "best_epoch": "2"}
        row |= {"accuracy": f"0.89{index}1", "accuracy_se": "0.00311906", "gap_ssim": "-0.0350979", "gap_dcor": "1e-05"}
        row |= {"model_seconds": "49.6322", "attack_seconds": "55.9086", "code": "1b4b7c87360d"}
        rows.append(row)
    rows[-1] |= {"status": "diverged", "note": "non-finite loss, at step 3", "accuracy": ""}
    with open(folder / RUNS_FILE, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=V1_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "samples").mkdir(exist_ok=True)
    for index, fill in ((0, 0.0), (2, 1.0)):
        images = torch.full((2, 1, 28, 28), fill).half()
        torch.save(
            {"originals": images, "attack": images, "baseline": images},
            folder / "samples" / f"{rows[index]['key']}.pt",
        )
    return rows
