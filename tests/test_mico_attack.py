"""``scripts/mico.py attack`` and :mod:`dpsnn.mico.attack` on a tiny Purchase-100 task in MICO's official layout.

Each model is MICO's Purchase-100 MLP trained to memorise its members (random labels), saved as a state
dict like the published ``model.pt`` files; the dataset is a small ``dataset_purchase`` text file.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from test_mico_official import purchase_table, save_official, write_purchase
from test_mico_script import one_line_error

from dpsnn.errors import ConfigError, DataError
from dpsnn.mico.attack import attack_challenge, mico_attack, to_unit_interval
from dpsnn.mico.challenge import challenge_split, draw_seeds
from dpsnn.mico.layout import model_weights_path, read_predictions, write_model_folder
from dpsnn.mico.official import mico_purchase100_dataset, mico_purchase100_mlp
from dpsnn.results import read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "mico.py"
SIZE, LEN_TRAINING, LEN_CHALLENGE = 240, 60, 10
SCENARIOS = ("purchase100_inf", "purchase100_lo")
MODELS = {"train": range(0, 4), "dev": range(100, 102), "final": range(150, 151)}
SIZES = ["--len-training", str(LEN_TRAINING), "--len-challenge", str(LEN_CHALLENGE)]


def trained(inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mico_purchase100_mlp()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(80):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """A pristine tiny task (copy it before writing into it): two scenarios of over-fitted models, and the data."""
    root = tmp_path_factory.mktemp("mico")
    data = write_purchase(root / "data" / "purchase100" / "dataset_purchase", purchase_table(SIZE, seed=4))
    dataset = mico_purchase100_dataset(data)
    for number, scenario in enumerate(SCENARIOS):
        for phase, indices in MODELS.items():
            for index in indices:
                seeds = draw_seeds(number, index)
                split = challenge_split(SIZE, LEN_TRAINING, seeds, LEN_CHALLENGE)
                folder = write_model_folder(root / "purchase100" / scenario, phase, index, seeds, split.solution)
                train = split.train
                model = trained(dataset.inputs[train], dataset.labels[train], seed=index)
                save_official(model, model_weights_path(folder), private=scenario.endswith("_lo"))
    return root


@pytest.fixture
def tree(task, tmp_path) -> Path:
    import shutil

    shutil.copytree(task, tmp_path / "copy")
    return tmp_path / "copy"


@pytest.fixture(scope="module")
def main():
    return runpy.run_path(str(REPO / "scripts" / SCRIPT))["main"]


def attacking(root: Path, *extra: str) -> list[str]:
    return [
        "attack",
        "--challenge",
        str(root / "purchase100"),
        "--purchase100",
        str(root / "data"),
        "--results-dir",
        str(root / "results"),
        "--n-bootstrap",
        "5",
        *SIZES,
        *extra,
    ]


def model_folders(root: Path) -> list[Path]:
    return sorted((root / "purchase100").glob("*/*/model_*"))


def average(root: Path) -> dict[str, str]:
    _, rows = read_table(root / "results" / "scores.csv")
    return rows[-1]


def test_loss_threshold_writes_every_prediction_and_scores_train_above_chance(main, tree, capsys):
    assert main(attacking(tree, "--attack", "membership-threshold:signal=loss")) == 0
    out = capsys.readouterr().out
    folders = model_folders(tree)
    assert len(folders) == len(SCENARIOS) * sum(map(len, MODELS.values()))
    for folder in folders:
        scores = read_predictions(folder, count=2 * LEN_CHALLENGE)
        assert bool(((scores >= 0) & (scores <= 1)).all())
    row = average(tree)
    assert row["phases"] == "train" and int(row["points"]) == len(SCENARIOS) * 4 * 2 * LEN_CHALLENGE
    print("loss AUC", row["AUC"], "TPR_FPR_1000", row["TPR_FPR_1000"])
    assert float(row["AUC"]) > 0.8 and float(row["TPR_FPR_1000"]) > 0.3
    assert "ranking figure (average TPR_FPR_1000)" in out and "wrote " in out


def test_chance_is_near_half_and_output_mirrors_the_layout(main, tree, capsys):
    output = tree / "attacked"
    assert main(attacking(tree, "--attack", "chance", "--output", str(output))) == 0
    assert not any((tree / "purchase100").glob("*/*/model_*/prediction.csv"))
    mirrored = sorted(output.glob("purchase100/*/*/model_*/prediction.csv"))
    assert len(mirrored) == len(model_folders(tree))
    auc = float(average(tree)["AUC"])
    print("chance AUC", auc)
    assert 0.3 < auc < 0.7


def test_calibrated_uses_the_train_models_as_shadows(main, tree, capsys):
    assert main(attacking(tree, "--attack", "calibrated:mode=online")) == 0
    row = average(tree)
    print("calibrated AUC", row["AUC"], "TPR_FPR_1000", row["TPR_FPR_1000"])
    assert float(row["AUC"]) > 0.7
    for folder in model_folders(tree):
        assert len(read_predictions(folder, count=2 * LEN_CHALLENGE)) == 2 * LEN_CHALLENGE


def test_an_attack_model_learns_from_the_train_models(main, tree, capsys):
    """MindArmour's attack models on [loss, logits], fitted on the train models' points (each train model left out).

    Logistic regression here: the forest's grid search takes a minute on this tree, and every model shares the code.
    """
    model = "logistic"
    assert main(attacking(tree, "--attack", f"classifier:model={model}")) == 0
    row = average(tree)
    print(model, "AUC", row["AUC"], "TPR_FPR_1000", row["TPR_FPR_1000"])
    assert float(row["AUC"]) > 0.7
    for folder in model_folders(tree):
        scores = read_predictions(folder, count=2 * LEN_CHALLENGE)
        assert bool(((scores >= 0) & (scores <= 1)).all())


@pytest.mark.parametrize(
    "name", ["membership-threshold:signal=entropy", "calibrated:mode=offline", "classifier:model=knn"]
)
def test_dev_only_writes_dev_and_does_not_score(name, main, tree, capsys):
    assert main(attacking(tree, "--attack", name, "--phase", "dev", "--scenario", "purchase100_lo")) == 0
    written = sorted((tree / "purchase100").glob("*/*/model_*/prediction.csv"))
    assert [path.parent.relative_to(tree / "purchase100").as_posix() for path in written] == [
        "purchase100_lo/dev/model_100",
        "purchase100_lo/dev/model_101",
    ]
    assert "train/ not scored" in capsys.readouterr().out
    assert not (tree / "results").exists()


def test_the_score_map_is_one_increasing_function_into_the_unit_interval():
    raw = torch.tensor([-1e300, -800.0, -40.0, -1e-9, 0.0, 1e-9, 40.0, 800.0, 1e300], dtype=torch.float64)
    mapped = to_unit_interval(raw)
    assert bool((mapped >= 0).all() and (mapped <= 1).all())
    assert bool((mapped[1:-1].diff() > 0).all())  # no ties where a sigmoid would saturate
    assert mapped[4] == 0.5


@pytest.mark.parametrize(
    "text, says",
    [
        ("nonsense", "unknown attack 'nonsense'"),
        ("membership-threshold:shadow_models=4", "trains shadow models on auxiliary data"),
        ("lira", "trains shadow models on auxiliary data"),
        ("decoder", "is not a membership attack"),
        ("calibrated:mode=sideways", "mode must be one of online, offline"),
        ("classifier:model=svm", "model must be one of"),
        ("classifier:depth=3", "has no parameter 'depth'"),
    ],
)
def test_attacks_that_cannot_run_on_mico_are_refused(text, says):
    with pytest.raises(ConfigError, match=says):
        mico_attack(text)


def errors(root: Path) -> dict[str, tuple[list[str], int, str]]:
    return {
        "unknown attack": (attacking(root, "--attack", "nonsense"), 2, "unknown attack 'nonsense'"),
        "missing model": (attacking(root), 1, "model_101/model.pt: no model file there"),
        "missing dataset": (
            [*attacking(root)[:4], str(root / "absent"), *attacking(root)[5:]],
            1,
            "no such file or folder",
        ),
        "other task": (attacking(root, "--scenario", "cifar10_lo"), 1, "no scenario 'cifar10_lo'"),
    }


@pytest.mark.parametrize("case", ["unknown attack", "missing model", "missing dataset", "other task"])
def test_errors_are_one_line_and_write_nothing(case, main, tree, capsys, monkeypatch):
    if case == "missing model":
        model_weights_path(tree / "purchase100" / "purchase100_lo" / "dev" / "model_101").unlink()
    argv, code, says = errors(tree)[case]
    exited, line = one_line_error(main, argv, capsys, monkeypatch)
    assert exited == code and says in line, line
    assert not any((tree / "purchase100").glob("*/*/model_*/prediction.csv"))
    assert not (tree / "results").exists()


def test_a_cifar10_scenario_in_a_purchase100_tree_is_refused(tree):
    (tree / "purchase100" / "cifar10_lo" / "dev").mkdir(parents=True)
    dataset = mico_purchase100_dataset(tree / "data")
    with pytest.raises(DataError, match="a cifar10 scenario in a task folder of purchase100 scenarios"):
        attack_challenge(tree / "purchase100", dataset, "chance", len_training=LEN_TRAINING, len_challenge=10)
    assert not any((tree / "purchase100").glob("*/*/model_*/prediction.csv"))


@pytest.mark.parametrize("name", ["calibrated:mode=offline", "classifier:model=knn"])
def test_each_model_gets_its_own_scores_when_several_scenarios_are_attacked_at_once(tree, tmp_path, name):
    """Attacking dev alone pulls in the train models as shadows; every scenario's scores must stay with its models."""
    dataset = mico_purchase100_dataset(tree / "data" / "purchase100" / "dataset_purchase")
    sizes = {"len_training": LEN_TRAINING, "len_challenge": LEN_CHALLENGE}
    together = tmp_path / "together"
    attack_challenge(tree / "purchase100", dataset, name, phases=["dev"], output=together, progress=False, **sizes)
    for scenario in SCENARIOS:
        alone = tmp_path / scenario
        attack_challenge(
            tree / "purchase100", dataset, name, [scenario], ["dev"], output=alone, progress=False, **sizes
        )
        for index in MODELS["dev"]:
            folder = Path("purchase100") / scenario / "dev" / f"model_{index}"
            expected = read_predictions(alone / folder, count=2 * LEN_CHALLENGE)
            assert torch.equal(read_predictions(together / folder, count=2 * LEN_CHALLENGE), expected)
