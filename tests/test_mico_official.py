"""MICO's published models and datasets: checkpoints in the official form, CIFAR-10 and Purchase-100 as MICO
reads them, and the challenge points rebuilt from a model folder's seeds."""

from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_format import as_loaded, write_cifar_dataset
from opacus import GradSampleModule
from torch import nn
from torchvision.transforms import Normalize

from dpsnn.errors import CheckpointError, ConfigError, DataError
from dpsnn.mico.challenge import ChallengeSeeds, challenge_indices, challenge_split, draw_seeds
from dpsnn.mico.layout import model_weights_path, write_model_folder, write_solution
from dpsnn.mico.official import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MicoDataset,
    load_official_model,
    mico_cifar10_cnn,
    mico_cifar10_dataset,
    mico_purchase100_dataset,
    mico_purchase100_mlp,
    official_architecture,
    rebuild_challenge,
    task_of,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The parameters of MICO's models (src/mico-competition/mico.py of microsoft/MICO), keys as the bare model has them.
CNN_SHAPES = {
    "cnn.0.weight": (128, 3, 8, 8),
    "cnn.0.bias": (128,),
    "cnn.3.weight": (256, 128, 3, 3),
    "cnn.3.bias": (256,),
    "cnn.5.weight": (256, 256, 3, 3),
    "cnn.5.bias": (256,),
    "cnn.9.weight": (10, 6400),
    "cnn.9.bias": (10,),
}
MLP_SHAPES = {"mlp.0.weight": (128, 600), "mlp.0.bias": (128,), "mlp.2.weight": (100, 128), "mlp.2.bias": (100,)}


class CreatesFile:
    """A pickle that, when unpickled without restriction, creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with random weights drawn from ``seed`` (so a load that kept the initial ones would show)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def save_official(model: nn.Module, path: Path, private: bool) -> Path:
    """Save as MICO's scripts do: the Opacus-wrapped model's state dict (DP scenarios) or the bare one (ε = ∞)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((GradSampleModule(copy.deepcopy(model)) if private else model).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cnn():
    return trained_like(mico_cifar10_cnn(), seed=1)


@pytest.fixture(scope="module")
def mlp():
    return trained_like(mico_purchase100_mlp(), seed=2)


# ---------------------------------------------------------------------------------- architectures


def test_architectures_have_the_official_parameters_and_outputs():
    cnn, mlp = mico_cifar10_cnn(), mico_purchase100_mlp()
    assert {k: tuple(v.shape) for k, v in cnn.state_dict().items()} == CNN_SHAPES
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == MLP_SHAPES
    kinds = [type(layer).__name__ for layer in cnn.cnn]
    assert kinds == [
        "Conv2d",
        "Tanh",
        "MaxPool2d",
        "Conv2d",
        "Tanh",
        "Conv2d",
        "Tanh",
        "AvgPool2d",
        "Flatten",
        "Linear",
    ]
    assert (cnn.cnn[0].stride, cnn.cnn[0].padding, cnn.cnn[2].kernel_size, cnn.cnn[2].stride) == ((2, 2), (3, 3), 3, 1)
    assert (cnn.cnn[7].kernel_size, cnn.cnn[7].stride) == (2, 2)
    assert [type(layer).__name__ for layer in mlp.mlp] == ["Linear", "Tanh", "Linear"]
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert mlp(torch.zeros(2, 600)).shape == (2, 100)


def test_task_names():
    assert [task_of(name) for name in ("cifar10", "cifar10_lo", "purchase100_ddp", "sst2_inf")] == [
        "cifar10",
        "cifar10",
        "purchase100",
        "sst2",
    ]
    for name in ("cifar100", "cifar10-lo", "", "CIFAR10"):
        with pytest.raises(ConfigError, match="not a MICO task"):
            task_of(name)
    with pytest.raises(ConfigError, match="transformers"):
        official_architecture("sst2")
    with pytest.raises(ConfigError, match="transformers"):
        load_official_model("anything", "sst2_lo")


# ------------------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("private", [True, False], ids=["dp-opacus-prefix", "inf-bare"])
def test_official_checkpoints_load_to_the_same_outputs(tmp_path, cnn, mlp, private):
    folder = tmp_path / "cifar10_lo" / "dev" / "model_100"
    save_official(cnn, model_weights_path(folder), private)
    keys = list(torch.load(model_weights_path(folder), weights_only=True))
    assert all(key.startswith("_module.") for key in keys) == private
    loaded = load_official_model(folder, "cifar10_lo")  # a model folder names its model.pt
    assert not loaded.training
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(images), cnn(images))

    path = save_official(mlp, tmp_path / "purchase100" / "model.pt", private)
    loaded = load_official_model(path, "purchase100")
    records = torch.randint(0, 2, (5, 600), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad():
        assert torch.equal(loaded(records), mlp(records))


def damaged_states(mlp: nn.Module) -> dict[str, tuple[dict, str]]:
    state = {f"_module.{k}": v.clone() for k, v in mlp.state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "_module.mlp.2.bias"}
    extra = {**state, "_module.mlp.4.weight": torch.zeros(3)}
    wrong_shape = {**state, "_module.mlp.0.weight": torch.zeros(128, 601)}
    wrong_dtype = {**state, "_module.mlp.2.weight": state["_module.mlp.2.weight"].double()}
    twice = {**state, "mlp.0.bias": torch.zeros(128)}
    not_tensor = {**state, "_module.mlp.0.bias": [0.0] * 128}
    return {
        "missing": (missing, "mlp.2.bias is missing"),
        "extra": (extra, "unexpected entry mlp.4.weight"),
        "shape": (wrong_shape, r"mlp.0.weight has shape \(128, 601\), MICO's purchase100 model has \(128, 600\)"),
        "dtype": (wrong_dtype, "mlp.2.weight is torch.float64"),
        "twice": (twice, "mlp.0.bias appears twice"),
        "not-tensor": (not_tensor, "_module.mlp.0.bias holds a list"),
        "not-dict": ([state["_module.mlp.0.bias"]], "holds a list, not a state dict"),
    }


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "dtype", "twice", "not-tensor", "not-dict"])
def test_unexpected_contents_are_refused_naming_the_file_and_the_difference(tmp_path, mlp, case):
    payload, expected = damaged_states(mlp)[case]
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=expected) as caught:
        load_official_model(path, "purchase100_hi")
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_the_architecture_is_checked_against_the_task(tmp_path, mlp):
    path = save_official(mlp, tmp_path / "model.pt", private=True)
    with pytest.raises(CheckpointError, match="cnn.0.weight is missing; not a MICO cifar10 model"):
        load_official_model(path, "cifar10")


def test_code_in_a_checkpoint_is_never_run(tmp_path, mlp):
    inside_torch_file = tmp_path / "inside.txt"
    path = tmp_path / "evil" / "model.pt"
    path.parent.mkdir()
    torch.save({**mlp.state_dict(), "mlp.0.bias": CreatesFile(inside_torch_file)}, path)
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_official_model(path, "purchase100")
    assert not inside_torch_file.exists()

    raw_pickle = tmp_path / "raw.txt"
    content = pickle.dumps(CreatesFile(raw_pickle), protocol=2)
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_official_model(path, "purchase100")
    assert not raw_pickle.exists()
    pickle.loads(content).close()  # the file does what it says when unpickled without restriction
    assert raw_pickle.exists()


def test_a_pickled_module_is_refused(tmp_path, mlp):
    path = tmp_path / "model.pt"
    torch.save(mlp, path)
    with pytest.raises(CheckpointError, match="MicoPurchase100MLP.*refused without running it"):
        load_official_model(path, "purchase100")


def test_truncated_empty_oversized_and_missing_files_are_refused(tmp_path, mlp):
    path = save_official(mlp, tmp_path / "model.pt", private=True)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file"):
        load_official_model(path, "purchase100")
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="damaged or not a PyTorch file"):
        load_official_model(path, "purchase100")
    path.write_bytes(bytes(2 << 20))
    with pytest.raises(CheckpointError, match="more than the .* this architecture's weights can take"):
        load_official_model(path, "purchase100")
    with pytest.raises(CheckpointError, match="no model file there"):
        load_official_model(tmp_path / "model_3", "purchase100")


# --------------------------------------------------------------------------------------- datasets


def test_cifar10_is_train_then_test_normalised_as_mico_does(tmp_path):
    fake = write_cifar_dataset(tmp_path / "data", "cifar10", train_count=25, test_count=10)
    dataset = mico_cifar10_dataset(root=tmp_path / "data", system_dir=tmp_path / "none", download=False)
    assert (dataset.task, len(dataset), dataset.inputs.dtype) == ("cifar10", 35, torch.float32)
    raw = torch.cat([as_loaded(fake.train_pixels), as_loaded(fake.test_pixels)])  # torchvision's ToTensor
    assert torch.equal(dataset.inputs, Normalize(CIFAR10_MEAN, CIFAR10_STD)(raw))  # to the bit
    assert torch.equal(dataset.labels, torch.cat([fake.labels(True), fake.labels(False)]))
    channel_means = dataset.inputs.mean(dim=(0, 2, 3)) * torch.tensor(CIFAR10_STD) + torch.tensor(CIFAR10_MEAN)
    assert torch.allclose(channel_means, raw.mean(dim=(0, 2, 3)), atol=1e-5)


def purchase_table(rows: int, seed: int = 0) -> np.ndarray:
    """Rows of Shokri et al.'s file: a label 1..100, then 600 features 0 or 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 101, size=(rows, 1))
    labels[:2, 0] = (1, 100)
    return np.concatenate([labels, rng.integers(0, 2, size=(rows, 600))], axis=1)


def write_purchase(path: Path, table: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, fmt="%d", delimiter=",")
    return path


def test_purchase100_reads_the_text_file_in_order(tmp_path):
    table = purchase_table(30)
    write_purchase(tmp_path / "purchase100" / "dataset_purchase", table)
    for where in (tmp_path, tmp_path / "purchase100", tmp_path / "purchase100" / "dataset_purchase"):
        dataset = mico_purchase100_dataset(where)
        assert (dataset.task, dataset.inputs.shape, dataset.inputs.dtype) == ("purchase100", (30, 600), torch.float32)
        assert torch.equal(dataset.inputs, torch.from_numpy(table[:, 1:]).float())
        assert torch.equal(dataset.labels, torch.from_numpy(table[:, 0]) - 1)
        assert (dataset.labels.min(), dataset.labels.max()) == (0, 99)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("ragged", "not Purchase-100's text format"),
        ("word", "not Purchase-100's text format"),
        ("columns", "599 values per row, Purchase-100 has 601"),
        ("label-0", "row 3 has label 0, outside 1..100"),
        ("label-101", "row 3 has label 101"),
        ("feature-2", "row 3 has a feature other than 0 or 1"),
        ("empty", "no records"),
        ("binary", "not Purchase-100's text format"),
    ],
)
def test_malformed_purchase100_files_are_refused(tmp_path, case, expected):
    path = tmp_path / "dataset_purchase"
    table = purchase_table(5)
    lines = [",".join(str(value) for value in row) for row in table]
    if case == "ragged":
        lines[3] = lines[3].rsplit(",", 1)[0]
    elif case == "word":
        lines[1] = lines[1].replace(",1,", ",yes,", 1)
    elif case == "columns":
        lines = [line.rsplit(",", 2)[0] for line in lines]
    elif case in ("label-0", "label-101", "feature-2"):
        row = table[2].copy()
        row[0 if case != "feature-2" else 17] = {"label-0": 0, "label-101": 101, "feature-2": 2}[case]
        lines[2] = ",".join(str(value) for value in row)
    elif case == "empty":
        lines = []
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    if case == "binary":
        path.write_bytes(pickle.dumps({"dataset": table}))
    with pytest.raises(DataError, match=expected) as caught:
        mico_purchase100_dataset(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_mico_pickle_cache_of_purchase100_is_never_read(tmp_path):
    marker = tmp_path / "ran.txt"
    cache = tmp_path / "purchase100" / "dataset_purchase.pickle"
    cache.parent.mkdir()
    cache.write_bytes(pickle.dumps({"dataset": CreatesFile(marker)}, protocol=2))
    with pytest.raises(DataError, match="only MICO's pickled cache .* never unpickles data"):
        mico_purchase100_dataset(tmp_path)
    assert not marker.exists()


def test_missing_purchase100_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Purchase-100 not found: looked for .*dataset_purchase.*comp.nus.edu.sg"):
        mico_purchase100_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        mico_purchase100_dataset(tmp_path / "absent")


# -------------------------------------------------------------------------------------- challenges


@pytest.fixture
def tiny_purchase(tmp_path) -> MicoDataset:
    return mico_purchase100_dataset(write_purchase(tmp_path / "dataset_purchase", purchase_table(300, seed=3)))


def test_train_folder_rebuilds_challenge_members_and_training(tmp_path, tiny_purchase):
    seeds = draw_seeds(base_seed=5, model_index=7)
    split = challenge_split(300, len_training=120, seeds=seeds, len_challenge=20)
    folder = write_model_folder(tmp_path / "purchase100_lo", "train", 7, seeds, split.solution)
    challenge = rebuild_challenge(folder, tiny_purchase, len_training=120, len_challenge=20)
    assert challenge.folder == folder
    for name in ("solution", "members", "non_members", "training", "evaluation"):
        assert torch.equal(getattr(challenge, name), getattr(split, name)), name
    assert torch.equal(challenge.indices, split.challenge)
    assert torch.equal(challenge.inputs, tiny_purchase.inputs[split.challenge])
    assert torch.equal(challenge.labels, tiny_purchase.labels[split.challenge])
    assert torch.equal(challenge.indices[challenge.solution == 1].sort().values, split.members.sort().values)

    write_solution(folder, 1 - split.solution)
    with pytest.raises(DataError, match="solution.csv disagrees with seed_membership"):
        rebuild_challenge(folder, tiny_purchase, len_training=120, len_challenge=20)


def test_dev_folders_disclose_the_challenge_and_ddp_the_training_points(tmp_path, tiny_purchase):
    seeds = ChallengeSeeds(2**40 + 3, 11, 2**62 + 1)
    split = challenge_split(300, len_training=120, seeds=seeds, len_challenge=20)
    dev = write_model_folder(tmp_path / "purchase100_inf", "dev", 120, seeds)
    challenge = rebuild_challenge(dev, tiny_purchase, len_training=120, len_challenge=20)
    assert torch.equal(challenge.indices, challenge_indices(300, seeds.challenge, 20))
    assert torch.equal(challenge.indices, split.challenge)
    assert (challenge.solution, challenge.members, challenge.training) == (None, None, None)

    ddp = write_model_folder(tmp_path / "purchase100_ddp", "final", 160, seeds, disclose_training=True)
    challenge = rebuild_challenge(ddp, tiny_purchase, len_training=120, len_challenge=20)
    assert torch.equal(challenge.training, split.training)
    assert torch.equal(challenge.evaluation, split.evaluation)
    assert (challenge.solution, challenge.members, challenge.non_members) == (None, None, None)


def test_official_sizes_are_the_default_and_need_the_whole_dataset(tmp_path, tiny_purchase):
    seeds = draw_seeds(base_seed=0, model_index=3)
    split = challenge_split(60_000, len_training=50_000, seeds=seeds)
    folder = write_model_folder(tmp_path / "cifar10_hi", "train", 3, seeds, split.solution)
    whole = MicoDataset("cifar10", torch.arange(60_000).unsqueeze(1), torch.zeros(60_000, dtype=torch.long))
    challenge = rebuild_challenge(folder, whole)
    assert torch.equal(challenge.indices, split.challenge) and len(challenge.indices) == 200
    assert torch.equal(challenge.training, split.training) and len(split.training) == 49_900
    assert torch.equal(challenge.inputs[:, 0], split.challenge)
    with pytest.raises(ConfigError, match="drawn from all 197324 points, this dataset has 300"):
        rebuild_challenge(folder, tiny_purchase)


def test_sst2_without_transformers_is_one_error_naming_the_extra(tmp_path, monkeypatch):
    folder = tmp_path / "sst2_hi" / "train" / "model_0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "roberta", "num_labels": 2}')
    (folder / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'dpsnn\[sst2\]'"):
        load_official_model(folder, "sst2_hi")
