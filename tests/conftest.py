"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest

from dpsnn.experiments.runner import ExperimentRunner
from dpsnn.experiments.suites import QUICK, customised

# A budget small enough for tests: it checks the plumbing of the runner, not the numbers.
TINY_BUDGET = dict(
    train_size=256, val_size=256, model_epochs=1, attack_steps=4, aux_size=200, test_size=300, validator_train_size=512
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A private data folder: the datasets are unpacked into it from the system copy."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_runner(data_root):
    """Make an :class:`ExperimentRunner` on the tiny budget whose files all live under ``folder``."""

    def make(folder: Path) -> ExperimentRunner:
        return ExperimentRunner(
            customised(QUICK, **TINY_BUDGET),
            "fashion-mnist",
            folder / "results",
            folder / "models",
            data_dir=data_root,
            validators_dir=folder / "validators",
            progress=False,
        )

    return make
