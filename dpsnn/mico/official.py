"""MICO's published models and datasets: the CIFAR-10 CNN, the Purchase-100 MLP, the SST-2 RoBERTa, and data.

MICO trained 200 models per scenario with ``training/train_cifar10.py`` and
``training/train_purchase100.py`` of ``microsoft/MICO``; its package (``src/mico-competition``) defines the
architectures (``mico.py``) and the datasets (``challenge_datasets.py``). What was read there, and is built
here without that code:

- **the CIFAR-10 CNN** (``CNN`` in ``mico.py``), one ``nn.Sequential`` named ``cnn``: an 8×8 convolution
  3→128 with stride 2 and padding 3, tanh, a 3×3 max-pool of stride 1, a 3×3 convolution 128→256, tanh, a
  3×3 convolution 256→256, tanh, a 2×2 average pool of stride 2, flatten and a linear map 6400→10. On a
  3×32×32 image the sides go 16, 14, 12, 10, 5, so the flattened map is 256·5·5 = 6400. Parameters:
  ``cnn.0``, ``cnn.3``, ``cnn.5`` (convolutions) and ``cnn.9`` (linear), each a ``weight`` and a ``bias``;
- **the Purchase-100 MLP** (``MLP``, "from Bao et al. (2022)"; the competition's README calls it a
  3-layer fully connected network, the code has two linear layers), one ``nn.Sequential`` named ``mlp``:
  linear 600→128, tanh, linear 128→100. Parameters ``mlp.0`` and ``mlp.2``;
- **the checkpoints**: each ``model.pt`` is ``torch.save(model.state_dict())``, a dict of tensors and not a
  pickled module. In the DP scenarios (``_hi``, ``_lo``, ``_ddp``) ``model`` is Opacus's
  ``GradSampleModule`` returned by ``make_private``, so every key starts with ``_module.``; the ε = ∞
  scenarios (``_inf``) train with ``--disable_dp`` and save the bare model, whose keys have no prefix.
  Tensors may have been saved from a GPU. MICO's own loader calls ``torch.load`` without
  ``weights_only``, which would run whatever code a pickle names; :func:`load_official_model` reads the
  file with ``weights_only=True`` (tensors and plain containers only: a file that names anything else is
  refused before it runs) onto the CPU, removes a leading ``_module.``, and checks that the keys are
  exactly the architecture's, each a float32 tensor of the architecture's shape, before loading;
- **CIFAR-10 as MICO uses it**: torchvision's training set (``data_batch_1`` … ``data_batch_5``) followed
  by its test set (``test_batch``), 60,000 images, each scaled to ``[0, 1]`` and normalised per channel by
  mean (0.49139968, 0.48215841, 0.44653091) and std (0.24703223, 0.24348513, 0.26158784) (not Opacus's
  averaged std). :func:`mico_cifar10_dataset` reads the batches with :func:`dpsnn.data.load_images` (a
  restricted unpickler) and normalises in float32 as torchvision's ``Normalize`` does, to the bit;
- **Purchase-100**: Shokri et al.'s ``dataset_purchase``, a comma-separated text file of 197,324 rows of
  a label 1…100 and 600 binary features, which MICO looks for as ``<dataset_dir>/purchase100/dataset_purchase``
  and never downloads (it names where to get it). Each record is its 600 features as float32, unscaled, and
  its label minus 1. MICO caches the parsed array as ``dataset_purchase.pickle`` beside it; that cache is a
  pickle and is never read here: :func:`mico_purchase100_dataset` parses the text, with no pickle;
- **the splits**: ``len_training`` is 50,000 for CIFAR-10 and 150,000 for Purchase-100 (the training
  scripts' shell wrappers and the starting kit), ``len_challenge`` 100. :func:`rebuild_challenge` draws a
  model folder's split with :mod:`dpsnn.mico.challenge` from the seeds the folder discloses.

- **the SST-2 models**: ``training/train_sst2.py`` fine-tunes ``roberta-base`` with two labels
  (``AutoModelForSequenceClassification``, with dp-transformers and Opacus 0.15, which hooks the model
  without wrapping it) and saves it with the Trainer's ``save_model``: each model folder holds
  ``config.json`` and ``pytorch_model.bin``, the ``RobertaForSequenceClassification`` state dict (keys
  ``roberta.…`` and ``classifier.…``; files of transformers before 4.31 also keep the
  ``roberta.embeddings.position_ids`` buffer). MICO's ``load_model`` calls ``from_pretrained`` on the
  folder. :func:`load_official_model` needs Hugging Face ``transformers`` (the optional extra
  ``pip install 'dpsnn[sst2]'``; without it, a :class:`~dpsnn.errors.ConfigError` says so), imported only
  then: it parses ``config.json`` as JSON into a ``RobertaConfig`` (a ``roberta`` model with 2 labels),
  builds ``RobertaForSequenceClassification`` from it with no download and no code from the folder,
  reads ``pytorch_model.bin`` weights-only (or ``model.safetensors``, which newer transformers write) and
  checks the keys as for the other tasks. The model takes the token ids of MICO's scoring
  (``roberta-base``'s tokenizer, padded to 67 tokens) and returns an output whose ``logits`` are
  ``(B, 2)``. MICO's SST-2 dataset (GLUE SST-2's training then validation sentences, 68,221, fetched
  with Hugging Face ``datasets``) is not built here.

Example::

    import torch
    from dpsnn.mico.layout import list_model_folders
    from dpsnn.mico.official import load_official_model, mico_cifar10_dataset, rebuild_challenge

    dataset = mico_cifar10_dataset(root="data")      # 60,000 normalised images, then their labels
    for folder in list_model_folders("cifar10/cifar10_lo", "dev"):
        model = load_official_model(folder, "cifar10_lo")
        challenge = rebuild_challenge(folder, dataset)
        with torch.no_grad():
            logits = model(challenge.inputs)          # the 200 points to score, in scoring order
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR, load_images
from dpsnn.errors import CheckpointError, ConfigError, DataError
from dpsnn.mico.challenge import LEN_CHALLENGE, ChallengeSeeds, challenge_indices, challenge_split
from dpsnn.mico.layout import model_weights_path, read_model_folder

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASET_LENGTH",
    "LEN_TRAINING",
    "MAX_PURCHASE100_BYTES",
    "OPACUS_PREFIX",
    "PURCHASE100_CLASSES",
    "PURCHASE100_FEATURES",
    "PURCHASE100_FILE",
    "SST2_CONFIG_FILE",
    "SST2_LABELS",
    "SST2_WEIGHTS_FILES",
    "TASKS",
    "MicoCifar10CNN",
    "MicoDataset",
    "MicoPurchase100MLP",
    "OfficialChallenge",
    "load_official_model",
    "mico_cifar10_cnn",
    "mico_cifar10_dataset",
    "mico_purchase100_dataset",
    "mico_purchase100_mlp",
    "official_architecture",
    "rebuild_challenge",
    "task_of",
]

TASKS = ("cifar10", "purchase100", "sst2")
#: ``len_training`` (n, members included) of every model of a task, as the official scripts pass it.
LEN_TRAINING = {"cifar10": 50_000, "purchase100": 150_000, "sst2": 67_349}
#: The number of points in each task's whole dataset (CIFAR-10: 50,000 training then 10,000 test images).
DATASET_LENGTH = {"cifar10": 60_000, "purchase100": 197_324}

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)

PURCHASE100_FILE = "dataset_purchase"
PURCHASE100_FEATURES = 600
PURCHASE100_CLASSES = 100
MAX_PURCHASE100_BYTES = 1 << 30  # the real file is about 240 MB

OPACUS_PREFIX = "_module."  # what Opacus's GradSampleModule puts before every key of the wrapped model
_TASK_NAME = re.compile(r"(cifar10|purchase100|sst2)(?:_[a-z0-9]+)?")
_FILE_SLACK_BYTES = 1 << 20  # room for the zip archive's names and headers around the tensors
#: The files of an SST-2 model folder: MICO's (transformers' ``save_pretrained`` before version 5) and newer.
SST2_CONFIG_FILE = "config.json"
SST2_WEIGHTS_FILES = ("pytorch_model.bin", "model.safetensors")
SST2_LABELS = 2
_MAX_CONFIG_BYTES = 1 << 20  # a config.json takes about 1 KB
#: A buffer that transformers saved until 4.31 (the position indices ``0 … max_position_embeddings - 1``).
_SST2_POSITION_IDS = "roberta.embeddings.position_ids"
_SST2_EXTRA = "pip install 'dpsnn[sst2]'"
_SST2_NEEDS_A_FOLDER = (
    "MICO's SST-2 models are Hugging Face transformers RoBERTa classifiers whose architecture each model "
    "folder's config.json sets: load one with load_official_model(folder, 'sst2')"
)


# ---------------------------------------------------------------------------------- architectures


class MicoCifar10CNN(nn.Module):
    """MICO's CIFAR-10 classifier: three tanh convolutions, two pools and a linear map to 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=8, stride=2, padding=3),
            nn.Tanh(),
            nn.MaxPool2d(kernel_size=3, stride=1),
            nn.Conv2d(128, 256, kernel_size=3),
            nn.Tanh(),
            nn.Conv2d(256, 256, kernel_size=3),
            nn.Tanh(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(256 * 5 * 5, 10),
        )

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` of normalised images ``(B, 3, 32, 32)``."""
        return self.cnn(images)


class MicoPurchase100MLP(nn.Module):
    """MICO's Purchase-100 classifier: 600 binary features, 128 tanh units, 100 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(PURCHASE100_FEATURES, 128), nn.Tanh(), nn.Linear(128, PURCHASE100_CLASSES))

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, 100)`` of records ``(B, 600)``."""
        return self.mlp(features)


def mico_cifar10_cnn() -> MicoCifar10CNN:
    """A freshly initialised CIFAR-10 CNN of MICO's architecture (keys ``cnn.0.weight`` … ``cnn.9.bias``)."""
    return MicoCifar10CNN()


def mico_purchase100_mlp() -> MicoPurchase100MLP:
    """A freshly initialised Purchase-100 MLP of MICO's architecture (keys ``mlp.0.weight`` … ``mlp.2.bias``)."""
    return MicoPurchase100MLP()


def task_of(scenario_or_task: str) -> str:
    """The task of a task or scenario name: ``cifar10_lo`` → ``cifar10``, ``purchase100`` → ``purchase100``."""
    match = _TASK_NAME.fullmatch(scenario_or_task) if isinstance(scenario_or_task, str) else None
    if match is None:
        raise ConfigError(
            f"{scenario_or_task!r} is not a MICO task or scenario; the tasks are {', '.join(TASKS)} "
            "(a scenario adds a suffix, e.g. cifar10_lo)"
        )
    return match.group(1)


def official_architecture(scenario_or_task: str) -> nn.Module:
    """A freshly initialised model of the architecture MICO trained for this task or scenario.

    CIFAR-10 and Purchase-100 only: an SST-2 model's architecture is its folder's ``config.json``, so
    asking for ``sst2`` is a :class:`~dpsnn.errors.ConfigError` pointing to :func:`load_official_model`.
    """
    task = task_of(scenario_or_task)
    if task == "cifar10":
        return mico_cifar10_cnn()
    if task == "purchase100":
        return mico_purchase100_mlp()
    raise ConfigError(_SST2_NEEDS_A_FOLDER)


# ------------------------------------------------------------------------------------ checkpoints


def _read_payload(path: Path, limit: int) -> object:
    if not path.is_file():
        raise CheckpointError(f"{path}: no model file there")
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path}: {size} bytes, more than the {limit} this architecture's weights can take")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of older files
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights-only reading runs no code: any failure means "not plain weights"
        raise CheckpointError(f"{path}: {_load_failure(error)}") from None


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words on one line."""
    message = str(error)
    _, refused, detail = message.partition("WeightsUnpickler error:")
    if isinstance(error, pickle.UnpicklingError) and refused:
        first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        first = first.split(" was not an allowed global")[0][:120]
        return f"holds more than tensors and plain containers ({first}); refused without running it"
    detail = " ".join(message.split()).split(". ")[0][:120]
    return f"damaged or not a PyTorch file ({type(error).__name__}{': ' + detail if detail else ''})"


def _strip_prefix(payload: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a state dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in payload.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is not a parameter name")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: {key} holds a {type(value).__name__}, not a tensor")
        name = key.removeprefix(OPACUS_PREFIX)
        if name in state:
            raise CheckpointError(f"{path}: {name} appears twice, with and without Opacus's {OPACUS_PREFIX} prefix")
        state[name] = value
    return state


def _check_state(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path, task: str) -> None:
    for name, reference in expected.items():
        if name not in state:
            raise CheckpointError(f"{path}: {name} is missing; not a MICO {task} model")
        found = state[name]
        if found.shape != reference.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(found.shape)}, MICO's {task} model has {tuple(reference.shape)}"
            )
        if found.dtype != reference.dtype:
            raise CheckpointError(f"{path}: {name} is {found.dtype}, MICO's {task} model stores {reference.dtype}")
    for name in state:
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected entry {name}; not a MICO {task} model")


def load_official_model(path: str | Path, scenario_or_task: str) -> nn.Module:
    """Load a published MICO model: ``path`` is its ``model.pt`` or its model folder; returned in eval mode.

    ``scenario_or_task`` names the architecture (``cifar10``, ``purchase100``, ``sst2`` or a scenario of
    theirs such as ``cifar10_lo``). The file is read weights-only onto the CPU, a leading ``_module.`` is
    removed from every key, and the keys, shapes and dtypes must be exactly the architecture's: anything
    else is a :class:`~dpsnn.errors.CheckpointError` naming the file and the first difference.

    SST-2 needs the model folder (``config.json`` and ``pytorch_model.bin``) and Hugging Face
    ``transformers`` (``pip install 'dpsnn[sst2]'``): the result is a ``RobertaForSequenceClassification``
    built from ``config.json``, called with ``input_ids`` and ``attention_mask``; see the module docstring.
    """
    task = task_of(scenario_or_task)
    if task == "sst2":
        return _load_sst2_model(Path(path))
    path = Path(path)
    if path.is_dir():
        path = model_weights_path(path)
    model = official_architecture(task)
    expected = model.state_dict()
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in expected.values())
    state = _strip_prefix(_read_payload(path, 2 * weight_bytes + _FILE_SLACK_BYTES), path)
    _check_state(state, expected, path, task)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _import_transformers():
    """``transformers``, imported only when an SST-2 model is loaded (it takes seconds and is optional)."""
    try:
        import transformers
    except ImportError as error:
        raise ConfigError(
            f"MICO's SST-2 models need Hugging Face transformers, which is not installed ({error}); "
            f"install the optional extra: {_SST2_EXTRA}"
        ) from None
    return transformers


def _read_sst2_config(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no model configuration there; not a MICO sst2 model folder")
    size = path.stat().st_size
    if size > _MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, more than the {_MAX_CONFIG_BYTES} a model configuration takes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a JSON model configuration ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}, not a model configuration")
    if config.get("model_type") != "roberta":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, MICO's sst2 models are 'roberta'")
    return config


def _sst2_weights_path(folder: Path) -> Path:
    present = [folder / name for name in SST2_WEIGHTS_FILES if (folder / name).is_file()]
    if not present:
        raise CheckpointError(f"{folder}: no model file there (looked for {' and '.join(SST2_WEIGHTS_FILES)})")
    if len(present) > 1:
        raise CheckpointError(f"{folder}: holds both {' and '.join(SST2_WEIGHTS_FILES)}; keep the one to load")
    return present[0]


def _read_safetensors(path: Path, limit: int) -> dict[str, Tensor]:
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path}: {size} bytes, more than the {limit} this architecture's weights can take")
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors holds tensors only: a failure means a damaged file
        detail = " ".join(str(error).split())[:120]
        raise CheckpointError(f"{path}: damaged or not a safetensors file ({type(error).__name__}: {detail})") from None


def _load_sst2_model(folder: Path) -> nn.Module:
    transformers = _import_transformers()
    if folder.is_file() and folder.name in SST2_WEIGHTS_FILES:
        folder = folder.parent  # the weights name their folder, as model.pt does for the other tasks
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; {_SST2_NEEDS_A_FOLDER}")
    config_path = folder / SST2_CONFIG_FILE
    settings = _read_sst2_config(config_path)
    try:
        config = transformers.RobertaConfig.from_dict(settings)
    except Exception as error:  # a value of the wrong type or range
        detail = " ".join(str(error).split())[:160]
        raise CheckpointError(
            f"{config_path}: not a RoBERTa configuration ({type(error).__name__}: {detail})"
        ) from None
    if config.num_labels != SST2_LABELS:
        raise CheckpointError(
            f"{config_path}: {config.num_labels} labels, MICO's sst2 models classify into {SST2_LABELS}"
        )
    try:
        model = transformers.RobertaForSequenceClassification(config)
    except Exception as error:  # e.g. a hidden size that the number of attention heads does not divide
        detail = " ".join(str(error).split())[:160]
        raise CheckpointError(f"{config_path}: cannot build its model ({type(error).__name__}: {detail})") from None
    expected = model.state_dict()
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in expected.values())
    limit = 2 * weight_bytes + _FILE_SLACK_BYTES
    path = _sst2_weights_path(folder)
    payload = _read_safetensors(path, limit) if path.suffix == ".safetensors" else _read_payload(path, limit)
    state = _strip_prefix(payload, path)
    positions = state.pop(_SST2_POSITION_IDS, None)
    if positions is not None and _SST2_POSITION_IDS not in expected:
        wanted = torch.arange(config.max_position_embeddings).expand(1, -1)
        if positions.shape != wanted.shape or not torch.equal(positions.long(), wanted):
            raise CheckpointError(f"{path}: {_SST2_POSITION_IDS} is not 0 … {config.max_position_embeddings - 1}")
    elif positions is not None:
        state[_SST2_POSITION_IDS] = positions
    _check_state(state, expected, path, "sst2")
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True, eq=False)
class MicoDataset:
    """A whole MICO dataset in memory, in MICO's order: ``inputs`` (as the models take them) and ``labels``."""

    task: str
    inputs: Tensor  # CIFAR-10: float32 (N, 3, 32, 32), normalised; Purchase-100: float32 (N, 600) of 0/1
    labels: Tensor  # int64 (N,), classes from 0

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{self.task}: {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


def mico_cifar10_dataset(
    root: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> MicoDataset:
    """CIFAR-10 as MICO indexes it: the training images then the test images, normalised per channel.

    The batches are found (or fetched) as :func:`dpsnn.data.load_images` finds them under ``root``;
    ``(x - mean) / std`` is computed in float32 with MICO's :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`.
    """
    train_images, train_labels = load_images("cifar10", True, root, system_dir, download)
    test_images, test_labels = load_images("cifar10", False, root, system_dir, download)
    images = torch.cat([train_images, test_images])
    del train_images, test_images
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32).view(3, 1, 1)
    images.sub_(mean).div_(std)
    return MicoDataset("cifar10", images, torch.cat([train_labels, test_labels]))


def _purchase100_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "purchase100" / PURCHASE100_FILE, path / PURCHASE100_FILE):
            if candidate.is_file():
                return candidate
        places = f"{path / 'purchase100' / PURCHASE100_FILE} and {path / PURCHASE100_FILE}"
        cached = [p for p in (path / "purchase100", path) if (p / f"{PURCHASE100_FILE}.pickle").is_file()]
        if cached:
            raise DataError(
                f"{path}: only MICO's pickled cache {cached[0] / (PURCHASE100_FILE + '.pickle')} is there; dpsnn "
                f"never unpickles data, and reads the text file {PURCHASE100_FILE} (looked for {places})"
            )
        raise DataError(f"Purchase-100 not found: looked for {places}; {_PURCHASE100_HINT}")
    raise DataError(f"{path}: no such file or folder; {_PURCHASE100_HINT}")


_PURCHASE100_HINT = (
    "get dataset_purchase.tgz (Shokri et al.'s preprocessed Purchase-100, linked from "
    "https://www.comp.nus.edu.sg/~reza/files/datasets.html) and extract dataset_purchase into <folder>/purchase100/"
)


def mico_purchase100_dataset(path: str | Path) -> MicoDataset:
    """Purchase-100 as MICO reads it: ``path`` is the ``dataset_purchase`` text file or the folder above it.

    A folder is searched for ``purchase100/dataset_purchase`` (MICO's ``dataset_dir`` layout), then
    ``dataset_purchase``. Each row is a label 1…100 and 600 features 0 or 1, comma-separated; the result
    keeps the file's row order, the features as float32 and the labels minus 1. The text is parsed by
    numpy (no pickle); a malformed file is a :class:`~dpsnn.errors.DataError` naming it.
    """
    path = _purchase100_file(Path(path))
    size = path.stat().st_size
    if size > MAX_PURCHASE100_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_PURCHASE100_BYTES} a Purchase-100 file can take")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below
            table = np.loadtxt(path, dtype=np.int16, delimiter=",", ndmin=2, comments=None, encoding="ascii")
    except (ValueError, UnicodeDecodeError) as error:
        detail = " ".join(str(error).split()).split(";")[0][:160]  # numpy's advice on usecols does not apply
        raise DataError(f"{path}: not Purchase-100's text format ({detail})") from None
    columns = 1 + PURCHASE100_FEATURES
    if table.size == 0:
        raise DataError(f"{path}: no records")
    if table.shape[1] != columns:
        raise DataError(f"{path}: {table.shape[1]} values per row, Purchase-100 has {columns} (a label, 600 features)")
    labels, features = table[:, 0], table[:, 1:]
    bad = np.flatnonzero((labels < 1) | (labels > PURCHASE100_CLASSES))
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 1} has label {labels[bad[0]]}, outside 1..{PURCHASE100_CLASSES}")
    bad = np.flatnonzero(((features != 0) & (features != 1)).any(axis=1))
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 1} has a feature other than 0 or 1")
    return MicoDataset(
        "purchase100",
        torch.from_numpy(features.astype(np.float32)),
        torch.from_numpy(labels.astype(np.int64) - 1),
    )


# -------------------------------------------------------------------------------------- challenges


@dataclass(frozen=True, eq=False)
class OfficialChallenge:
    """What a model folder's seeds disclose of its split, as dataset indices, with the points to score.

    ``indices``, ``inputs`` and ``labels`` are the ``2m`` challenge points in scoring order (the order of
    ``prediction.csv``). ``solution``, ``members`` and ``non_members`` come with ``seed_membership`` (``train``
    models); ``training`` (the ``n - m`` other training points) and ``evaluation`` with ``seed_training``
    (``train`` models, and every model of the DP distinguisher task). ``None`` where not disclosed.
    """

    folder: Path
    indices: Tensor
    inputs: Tensor
    labels: Tensor
    solution: Tensor | None
    members: Tensor | None
    non_members: Tensor | None
    training: Tensor | None
    evaluation: Tensor | None


def _len_training(dataset: MicoDataset, len_training: int | None) -> int:
    if len_training is not None:
        return len_training
    if dataset.task not in LEN_TRAINING or dataset.task not in DATASET_LENGTH:
        raise ConfigError(f"no official len_training for a {dataset.task!r} dataset; pass len_training")
    official = DATASET_LENGTH[dataset.task]
    if len(dataset) != official:
        raise ConfigError(
            f"MICO's {dataset.task} splits are drawn from all {official} points, this dataset has {len(dataset)}; "
            "pass len_training to split a dataset of another size"
        )
    return LEN_TRAINING[dataset.task]


def rebuild_challenge(
    folder: str | Path, dataset: MicoDataset, len_training: int | None = None, len_challenge: int = LEN_CHALLENGE
) -> OfficialChallenge:
    """Rebuild the split of the model in ``folder`` (its seed files) over ``dataset``, as MICO drew it.

    ``len_training`` defaults to the task's official one, which needs the whole official dataset. When
    the folder holds ``solution.csv`` and ``seed_membership``, the two must agree (a DataError otherwise).
    """
    disclosed = read_model_folder(folder)
    size = len(dataset)
    indices = challenge_indices(size, disclosed.seed_challenge, len_challenge)
    solution = members = non_members = training = evaluation = None
    if disclosed.seed_training is not None or disclosed.seed_membership is not None:
        # The three splits are independent: a withheld seed can stand at 0 without touching the others.
        seeds = ChallengeSeeds(disclosed.seed_challenge, disclosed.seed_training or 0, disclosed.seed_membership or 0)
        split = challenge_split(size, _len_training(dataset, len_training), seeds, len_challenge)
        if disclosed.seed_training is not None:
            training, evaluation = split.training, split.evaluation
        if disclosed.seed_membership is not None:
            solution, members, non_members = split.solution, split.members, split.non_members
            written = disclosed.solution
            if written is not None and not torch.equal(written, solution):
                raise DataError(
                    f"{disclosed.path}: solution.csv disagrees with seed_membership (len_challenge={len_challenge})"
                )
    return OfficialChallenge(
        folder=disclosed.path,
        indices=indices,
        inputs=dataset.inputs[indices],
        labels=dataset.labels[indices],
        solution=solution,
        members=members,
        non_members=non_members,
        training=training,
        evaluation=evaluation,
    )
