"""MICO's files on disk: a scenario's model folders, their seeds and solutions, and a submission's predictions.

A scenario (``cifar10_inf``, say, inside a task folder ``cifar10``) holds three phases of model folders::

    cifar10/cifar10_inf/train/model_0 … model_99      model.pt  seed_challenge  seed_training
                                                      seed_membership  solution.csv
    cifar10/cifar10_inf/dev/model_100 … model_149     model.pt  seed_challenge
    cifar10/cifar10_inf/final/model_150 … model_199   model.pt  seed_challenge

``train`` models disclose their whole split (all three seeds, and the membership of their challenge
points in ``solution.csv``); ``dev`` and ``final`` models only their challenge points. MICO's DP
distinguisher task also discloses ``seed_training`` for them (``disclose_training=True`` here). The
formats, as the official training scripts write them and its scorer reads them:

- a seed file holds one non-negative decimal integer and a newline (``print(seed, file=f)``);
- ``solution.csv`` is one comma-separated row of ``0``/``1``, one per challenge point, in challenge
  order (:mod:`dpsnn.mico.challenge`), written by :func:`csv.writer` (``\\r\\n`` line end);
- ``prediction.csv``, the attacker's, is one row of the same length (``2m`` = 200 in MICO) of floats
  in ``[0, 1]``, the confidence that each challenge point is a member. The scorer reads both files with
  ``np.loadtxt(path, delimiter=",")``, so a single column reads the same, and the readers here accept it.

The files are parsed as plain text (digits, signs, points and exponents; at most
:data:`MAX_CSV_BYTES`); anything else is a :class:`~dpsnn.errors.DataError` naming the file. Every
file is written whole or not at all (:func:`dpsnn.files.atomic_path`). ``model.pt`` is written and read
elsewhere; :func:`model_weights_path` names it.

A submission is a zip of the ``prediction.csv`` of every ``dev`` and ``final`` model of every
scenario, named from the task folder down (``cifar10/cifar10_inf/dev/model_100/prediction.csv``), as
the official starting kit writes it and its scorer expects it under ``res/``.

Example::

    from dpsnn.mico.challenge import challenge_split, draw_seeds
    from dpsnn.mico.layout import list_model_folders, write_model_folder, write_prediction, write_submission_zip

    for index in range(100, 150):
        seeds = draw_seeds(0, index)
        split = challenge_split(60_000, 50_000, seeds)
        folder = write_model_folder("cifar10/cifar10_inf", "dev", index, seeds, split.solution)
    for folder in list_model_folders("cifar10/cifar10_inf", "dev"):
        write_prediction(folder, scores)                       # 200 floats in [0, 1]
    write_submission_zip("cifar10", "submission.zip")          # once final/ has its predictions too
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dpsnn.errors import ConfigError, DataError
from dpsnn.files import atomic_path
from dpsnn.mico.challenge import LEN_CHALLENGE, SEED_LIMIT, ChallengeSeeds, check_seed

__all__ = [
    "MAX_CSV_BYTES",
    "MODEL_FILE",
    "PHASES",
    "PHASE_MODELS",
    "PREDICTION_FILE",
    "SEED_CHALLENGE_FILE",
    "SEED_MEMBERSHIP_FILE",
    "SEED_TRAINING_FILE",
    "SOLUTION_FILE",
    "SUBMISSION_PHASES",
    "ModelFolder",
    "list_model_folders",
    "model_folder",
    "model_index",
    "model_weights_path",
    "phase_of",
    "read_model_folder",
    "read_predictions",
    "read_seed",
    "read_seeds",
    "read_solution",
    "write_model_folder",
    "write_prediction",
    "write_seed",
    "write_seeds",
    "write_solution",
    "write_submission_zip",
]

PHASES = ("train", "dev", "final")
SUBMISSION_PHASES = ("dev", "final")
PHASE_MODELS = {"train": range(0, 100), "dev": range(100, 150), "final": range(150, 200)}

MODEL_FILE = "model.pt"
SEED_CHALLENGE_FILE = "seed_challenge"
SEED_TRAINING_FILE = "seed_training"
SEED_MEMBERSHIP_FILE = "seed_membership"
SOLUTION_FILE = "solution.csv"
PREDICTION_FILE = "prediction.csv"

MAX_CSV_BYTES = 1 << 20  # a row of 200 scores takes about 4 KB
_MAX_SEED_BYTES = 64  # 20 digits of a 64-bit seed, and some blank space
_MODEL_FOLDER = re.compile(r"model_(0|[1-9][0-9]*)")
_SEED = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same predictions give the same archive


# ---------------------------------------------------------------------------------------- folders


def _check_phase(phase: str) -> str:
    if phase not in PHASES:
        raise ConfigError(f"unknown MICO phase {phase!r}; the phases are {', '.join(PHASES)}")
    return phase


def phase_of(index: int) -> str:
    """The phase whose models include model ``index`` (``train`` 0–99, ``dev`` 100–149, ``final`` 150–199)."""
    if isinstance(index, bool) or not isinstance(index, int):
        raise ConfigError(f"a MICO model index is an integer, got {index!r}")
    for phase, indices in PHASE_MODELS.items():
        if index in indices:
            return phase
    raise ConfigError(f"MICO models are numbered 0 to 199, got {index}")


def model_folder(scenario: str | Path, phase: str, index: int) -> Path:
    """``scenario/phase/model_index``, refusing an index outside the phase's range."""
    if _check_phase(phase) != phase_of(index):
        indices = PHASE_MODELS[phase]
        raise ConfigError(f"{phase} models are numbered {indices.start} to {indices.stop - 1}, got {index}")
    return Path(scenario) / phase / f"model_{index}"


def model_index(folder: str | Path) -> int:
    """The number in a model folder's name (``model_12`` → 12)."""
    match = _MODEL_FOLDER.fullmatch(Path(folder).name)
    if match is None:
        raise DataError(f"{folder}: not a MICO model folder (model_<number>)")
    return int(match.group(1))


def list_model_folders(scenario: str | Path, phase: str) -> list[Path]:
    """The model folders of one phase of a scenario in numeric order (``model_2`` before ``model_10``)."""
    root = Path(scenario) / _check_phase(phase)
    if not root.is_dir():
        raise DataError(f"{root}: no such phase folder")
    folders = [entry for entry in root.iterdir() if entry.is_dir() and _MODEL_FOLDER.fullmatch(entry.name)]
    return sorted(folders, key=model_index)


def model_weights_path(folder: str | Path) -> Path:
    """Where a model folder keeps the model's weights (``model.pt``)."""
    return Path(folder) / MODEL_FILE


# ----------------------------------------------------------------------------------- plain text


def _read_text(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None
    if len(raw) > limit:
        raise DataError(f"{path}: larger than {limit} bytes")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not plain ASCII text") from None


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_bytes(text.encode("ascii"))


def _parse_row(text: str, path: Path) -> list[float]:
    """The numbers of a one-row (or one-column) comma-separated file, as ``np.loadtxt`` reads them flat."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty")
    if len(lines) > 1 and any("," in line for line in lines):
        raise DataError(f"{path}: {len(lines)} rows; expected one row (or one column) of values")
    tokens = [token.strip() for token in (lines[0].split(",") if len(lines) == 1 else lines)]
    for position, token in enumerate(tokens):
        if not _NUMBER.fullmatch(token):
            raise DataError(f"{path}: value {position} is {token[:20]!r}, not a number")
    return [float(token) for token in tokens]


def _csv_row(values: Sequence[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)  # the official scripts' writer: comma-separated, "\r\n"
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- seeds


_SEED_FILES = {"challenge": SEED_CHALLENGE_FILE, "training": SEED_TRAINING_FILE, "membership": SEED_MEMBERSHIP_FILE}


def _seed_file(role: str) -> str:
    if role not in _SEED_FILES:
        raise ConfigError(f"unknown seed {role!r}; the seeds are {', '.join(_SEED_FILES)}")
    return _SEED_FILES[role]


def write_seed(folder: str | Path, role: str, seed: int) -> None:
    """Write one seed (``role``: challenge, training or membership) as MICO does: the integer and a newline."""
    path = Path(folder) / _seed_file(role)
    _write_text(path, f"{check_seed(seed, f'seed_{role}')}\n")


def read_seed(folder: str | Path, role: str) -> int:
    """Read one seed file of a model folder (``role``: challenge, training or membership)."""
    path = Path(folder) / _seed_file(role)
    text = _read_text(path, _MAX_SEED_BYTES).strip()
    if not _SEED.fullmatch(text) or int(text) >= SEED_LIMIT:
        raise DataError(f"{path}: {text[:24]!r} is not a seed (an integer in [0, 2**64))")
    return int(text)


def read_seeds(folder: str | Path) -> ChallengeSeeds:
    """All three seeds of a model folder (a ``train`` model's); a missing file is a DataError naming it."""
    return ChallengeSeeds(*(read_seed(folder, role) for role in _SEED_FILES))


def write_seeds(folder: str | Path, seeds: ChallengeSeeds, roles: Sequence[str] = tuple(_SEED_FILES)) -> None:
    """Write the seed files of ``roles`` (all three by default) into a model folder."""
    for role in roles:
        write_seed(folder, role, getattr(seeds, role, None))  # write_seed refuses an unknown role first


# ------------------------------------------------------------------------ solutions and predictions


def _as_vector(values: Tensor | Sequence[float], folder: Path, what: str) -> Tensor:
    try:
        vector = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{folder}: the {what} must be numbers") from None
    if vector.dim() != 1:
        raise ConfigError(f"{folder}: the {what} must be one row of values, got shape {tuple(vector.shape)}")
    return vector


def write_solution(folder: str | Path, solution: Tensor | Sequence[int]) -> None:
    """Write ``solution.csv``: one row of 0/1 membership labels in challenge order, as MICO's scripts do."""
    folder = Path(folder)
    labels = _as_vector(solution, folder, "solution")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ConfigError(f"{folder}: a solution holds only 0 (non-member) and 1 (member)")
    _write_text(folder / SOLUTION_FILE, _csv_row([int(label) for label in labels.tolist()]))


def read_solution(folder: str | Path) -> Tensor:
    """The 0/1 labels of ``solution.csv``, as an int64 tensor in challenge order."""
    path = Path(folder) / SOLUTION_FILE
    values = _parse_row(_read_text(path, MAX_CSV_BYTES), path)
    for position, value in enumerate(values):
        if value not in (0.0, 1.0):
            raise DataError(f"{path}: value {position} is {value}, not 0 or 1")
    return torch.tensor(values, dtype=torch.long)


def write_prediction(folder: str | Path, scores: Tensor | Sequence[float], count: int = 2 * LEN_CHALLENGE) -> None:
    """Write ``prediction.csv``: ``count`` membership scores in ``[0, 1]``, one per challenge point, in one row."""
    folder = Path(folder)
    vector = _as_vector(scores, folder, "scores")
    if len(vector) != count:
        raise ConfigError(f"{folder}: {len(vector)} scores for {count} challenge points")
    if bool(vector.isnan().any()):
        raise ConfigError(f"{folder}: score {int(vector.isnan().nonzero()[0])} is NaN")
    outside = ((vector < 0) | (vector > 1)).nonzero()
    if len(outside):
        position = int(outside[0])
        raise ConfigError(f"{folder}: score {position} is {vector[position].item()}, outside [0, 1]")
    _write_text(folder / PREDICTION_FILE, _csv_row(vector.tolist()))


def _parse_predictions(text: str, path: Path, count: int | None) -> Tensor:
    values = _parse_row(text, path)
    if count is not None and len(values) != count:
        raise DataError(f"{path}: {len(values)} scores for {count} challenge points")
    for position, value in enumerate(values):
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{path}: score {position} is {value}, outside [0, 1]")
    return torch.tensor(values, dtype=torch.float64)


def read_predictions(folder: str | Path, count: int | None = None) -> Tensor:
    """The scores of ``prediction.csv`` as a float64 tensor (checked to number ``count`` when given)."""
    path = Path(folder) / PREDICTION_FILE
    return _parse_predictions(_read_text(path, MAX_CSV_BYTES), path, count)


# ------------------------------------------------------------------------------- model folders


@dataclass(frozen=True, eq=False)
class ModelFolder:
    """What a model folder discloses: ``None`` for each file it does not have."""

    path: Path
    index: int
    seed_challenge: int
    seed_training: int | None
    seed_membership: int | None
    solution: Tensor | None

    def seeds(self) -> ChallengeSeeds:
        """All three seeds (a ``train`` model's), or a DataError naming the folder when some are withheld."""
        if self.seed_training is None or self.seed_membership is None:
            raise DataError(f"{self.path}: the training and membership seeds are not both disclosed")
        return ChallengeSeeds(self.seed_challenge, self.seed_training, self.seed_membership)


def write_model_folder(
    scenario: str | Path,
    phase: str,
    index: int,
    seeds: ChallengeSeeds,
    solution: Tensor | Sequence[int] | None = None,
    disclose_training: bool = False,
) -> Path:
    """Write what model ``index`` of ``phase`` discloses in MICO, and return its folder.

    A ``train`` model gets its three seeds and ``solution.csv`` (``solution`` is required); a ``dev``
    or ``final`` model only ``seed_challenge`` (and ``seed_training`` with ``disclose_training``, as in
    the DP distinguisher task), and ``solution`` is not written: keep it apart, e.g. with
    :func:`write_solution` in a reference tree.
    """
    folder = model_folder(scenario, phase, index)
    if phase == "train":
        if solution is None:
            raise ConfigError(f"{folder}: a train model discloses its solution, so one is needed")
        write_seeds(folder, seeds)
        write_solution(folder, solution)
    else:
        write_seeds(folder, seeds, ("challenge", "training") if disclose_training else ("challenge",))
    return folder


def read_model_folder(folder: str | Path) -> ModelFolder:
    """Read a model folder's seeds and solution (not ``model.pt``, nor an attacker's ``prediction.csv``)."""
    folder = Path(folder)

    def optional_seed(role: str) -> int | None:
        return read_seed(folder, role) if (folder / _seed_file(role)).exists() else None

    return ModelFolder(
        path=folder,
        index=model_index(folder),
        seed_challenge=read_seed(folder, "challenge"),
        seed_training=optional_seed("training"),
        seed_membership=optional_seed("membership"),
        solution=read_solution(folder) if (folder / SOLUTION_FILE).exists() else None,
    )


# ---------------------------------------------------------------------------------- submission


def _submission_entries(task: Path) -> list[tuple[str, bytes]]:
    scenarios = sorted(entry for entry in task.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not scenarios:
        raise DataError(f"{task}: no scenario folders to submit")
    entries = []
    for scenario in scenarios:
        for phase in SUBMISSION_PHASES:
            folders = list_model_folders(scenario, phase)
            if not folders:
                raise DataError(f"{scenario / phase}: no model folders")
            for folder in folders:
                path = folder / PREDICTION_FILE
                if not path.is_file():
                    raise DataError(f"{folder}: no {PREDICTION_FILE}; every dev and final model needs one")
                text = _read_text(path, MAX_CSV_BYTES)
                _parse_predictions(text, path, count=None)
                entries.append((path.relative_to(task.parent).as_posix(), text.encode("ascii")))
    return entries


def write_submission_zip(task: str | Path, zip_path: str | Path) -> list[str]:
    """Zip the ``prediction.csv`` of every dev and final model of every scenario of ``task``; return the names.

    ``task`` is the folder of one task (``cifar10``), holding its scenario folders; the names start with
    its name (``cifar10/cifar10_inf/dev/model_100/prediction.csv``). Every scenario must have dev and
    final models, each with a valid ``prediction.csv``; the archive appears only once it is complete.
    """
    entries = _submission_entries(Path(task).resolve())
    with atomic_path(zip_path) as partial, zipfile.ZipFile(partial, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return [name for name, _ in entries]
