"""MICO in a box: train a MICO task of one's own, K models per scenario, in MICO's layout, resumably.

A *task* folder (``<output>/<dataset>``) gets one scenario per privacy level and per defence::

    mico/fashion-mnist/build.json                      the build's settings (see below)
    mico/fashion-mnist/fashion-mnist_inf/train/model_0 … dev/model_100 … final/model_150 …
    mico/fashion-mnist/fashion-mnist_eps10/...         DP-SGD at ε = 10 on the whole model
    mico/fashion-mnist/fashion-mnist_05noise/...       one scenario per --defence (its key)

**Models and phases.** K models per scenario (4 ≤ K ≤ 200) are split as MICO's 200 are (100 train, 50
dev, 50 final): ``train`` gets ⌈K/2⌉, ``dev`` ⌈(K − train)/2⌉, ``final`` the rest (K = 4: 2/1/1; K = 200:
100/50/50), numbered from the start of each phase's MICO range (``train`` 0…, ``dev`` 100…, ``final``
150…). Every count grows with K, so a tree built with K models is part of the tree of any larger K:
raising ``models`` later adds models, lowering it is refused. K ≥ 4 gives every phase one model and
``train`` the two that the ``calibrated`` attack needs as shadows.

**Splits.** Model ``k`` (its MICO number) draws :func:`~dpsnn.mico.challenge.draw_seeds` ``(seed, k)``
and its split :func:`~dpsnn.mico.challenge.challenge_split` over the dataset's official training set
(N points). Every scenario uses the same seeds, so the scenarios are paired: the same challenge points
and members, only the defence differs. ``len_training`` defaults to ``N // 2``: each point is then a
member of about half the models, as LiRA's shadows want, and ``N/2 − m`` points are left to evaluate on.
``len_challenge`` (m) is MICO's 100.

**Training.** Each model is a :class:`~dpsnn.models.SplitNN` of ``architecture`` trained for ``epochs``
epochs (Adam, ``learning_rate``, ``batch_size``) on ``split.train`` with the scenario's defences, and kept
as its last epoch left it, as MICO's models were (``keep="last"``), or with ``keep="best"`` at its best
epoch by accuracy on the first ``val_size`` points of ``split.evaluation`` (never challenge points;
early stopping of this kind is itself a mild defence against membership inference). Its torch seed is
derived apart from the split's seeds, so a ``dev`` or ``final`` checkpoint discloses nothing of its
split. Two trainers, recorded per scenario in ``build.json``:

- ``stacked`` (a scenario whose defences act only through the wire and the loss: none, noise, NoPeek):
  up to ``group_size`` models at once by :func:`~dpsnn.shadows.train_scheduled`, ``together`` (one
  vmapped step for the group) or ``one-by-one`` (the same arithmetic in a loop; ``auto`` picks, as for
  shadow models). Each model's initial weights and batch order (each epoch a fresh shuffle of its
  points, topped up to whole batches) come from its own seed, so its weights do not depend on its
  group; only a noise scenario's wire noise does (one generator, seeded by the group's first model).
- ``lightning`` (DP-SGD, suppress-privacy): :func:`~dpsnn.training.train_classifier`, one model at a time.

An ε scenario trains with ``dp:epsilon=ε,part=model``: DP-SGD on the whole model (the attacker gets all
of it, as in MICO's DP scenarios), δ the DP defence's default, 1/n rounded down to a power of ten
(n = ``len_training``: 1e-5 for 30,000). ``model.pt`` is a dpsnn classifier checkpoint
(:func:`~dpsnn.checkpoints.save_checkpoint`: plain data, architecture and defences recorded), loaded by
:func:`load_built_model`; a ``train`` folder also holds its three seeds and ``solution.csv``, a
``dev``/``final`` one ``seed_challenge`` only (:func:`~dpsnn.mico.layout.write_model_folder`).

**Resuming.** A model folder is written whole under ``<scenario>/.building`` and renamed into place once
its ``model.pt`` is saved, so a model folder that exists is finished and is skipped; an interrupted
group leaves only the staging folder, redone next time. A lock (``<task>/.lock``) keeps two builders off one
tree. ``build.json`` records the settings and each scenario's defences and model count; a build with
other settings, a scenario name with other defences, or fewer models than a scenario holds is refused.
Scenarios may be added later. The manifest's ``seed`` regenerates every split, solutions of ``dev`` and
``final`` included: keep it from an attacker under test.

Example::

    from dpsnn.mico.build import BuildSettings, build_task, load_built_model, scenarios_for

    settings = BuildSettings(dataset="fashion-mnist", architecture="reference", epochs=2)
    scenarios = scenarios_for("fashion-mnist", [float("inf"), 10.0], ["laplace:scale=0.5"])
    report = build_task("mico", settings, scenarios, models=8)      # mico/fashion-mnist/...
    model = load_built_model("mico/fashion-mnist/fashion-mnist_inf/dev/model_100")

and ``python scripts/mico.py build --dataset fashion-mnist --models 8 --epsilons inf 10 4``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, vmap
from tqdm import tqdm

from dpsnn.architectures import canonical_architecture
from dpsnn.checkpoints import load_classifier, save_checkpoint
from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR, Split, Splits, dataset_info, load_images
from dpsnn.defences import Defence, canonical, check, defence_from
from dpsnn.errors import ConfigError, DataError
from dpsnn.files import atomic_path, release_lock, try_lock
from dpsnn.mico.challenge import LEN_CHALLENGE, ChallengeSeeds, challenge_split, draw_seeds
from dpsnn.mico.layout import (
    PHASE_MODELS,
    PHASES,
    model_folder,
    model_index,
    model_weights_path,
    write_model_folder,
    write_solution,
)
from dpsnn.mico.official import MicoDataset
from dpsnn.models import SplitNN
from dpsnn.shadows import STRATEGIES, ShadowRecipe, batch_schedule, train_scheduled
from dpsnn.training import KEEP, train_classifier

__all__ = [
    "BUILD_FORMAT",
    "DEFAULT_GROUP_SIZE",
    "DEFAULT_VAL_SIZE",
    "TRAINERS",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "MAX_MODELS",
    "MIN_MODELS",
    "STAGING_FOLDER",
    "BuildReport",
    "BuildSettings",
    "Scenario",
    "build_task",
    "built_dataset",
    "is_built_task",
    "load_built_model",
    "phase_counts",
    "planned_models",
    "read_manifest",
    "scenario_name",
    "scenarios_for",
    "stackable",
    "trainer_of",
    "write_reference_solutions",
]

BUILD_FORMAT = 1
MANIFEST_FILE = "build.json"
LOCK_FILE = ".lock"
STAGING_FOLDER = ".building"
MIN_MODELS = 4  # a model in dev and in final, and two train models (the calibrated attack's shadows)
MAX_MODELS = 200  # MICO numbers its models 0 to 199
DEFAULT_VAL_SIZE = 1000
DEFAULT_GROUP_SIZE = 50  # models trained together at most (one vmapped step); a group is redone if interrupted
TRAINERS = ("stacked", "lightning")


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class BuildSettings:
    """What every model of a built task shares; ``len_training`` None means half the dataset's pool."""

    dataset: str = "fashion-mnist"
    architecture: str = "reference"
    epochs: int = 10
    len_training: int | None = None
    len_challenge: int = LEN_CHALLENGE
    batch_size: int = 128
    learning_rate: float = 1e-3
    val_size: int = DEFAULT_VAL_SIZE
    seed: int = 0
    keep: str = "last"  # MICO's recipe: the model as its last epoch left it; "best": its best epoch on validation

    def resolved(self, pool_size: int) -> BuildSettings:
        """These settings with ``len_training`` set and the architecture canonical, checked against the pool."""
        dataset_info(self.dataset)
        for name in ("epochs", "len_challenge", "batch_size", "val_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {self.seed}")
        if self.keep not in KEEP:
            raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        n = pool_size // 2 if self.len_training is None else self.len_training
        spare = pool_size - n - self.len_challenge
        if n < self.len_challenge or spare < 1:
            raise ConfigError(
                f"len_training={n} and len_challenge={self.len_challenge} do not fit the {pool_size} training "
                f"points of {self.dataset}: need len_challenge ≤ len_training and len_training + len_challenge < "
                f"{pool_size} (some points left to evaluate on)"
            )
        architecture = canonical_architecture(self.architecture)
        return dataclasses.replace(self, len_training=n, architecture=architecture)


@dataclass(frozen=True)
class Scenario:
    """One scenario of a built task: its folder name and the defences its models train with."""

    name: str
    defences: tuple[Defence, ...]


def _epsilon_text(epsilon: float) -> str:
    return "inf" if epsilon == math.inf else f"eps{epsilon:g}"


def scenario_name(dataset: str, tag: str) -> str:
    """``<dataset>_<tag>``: ``fashion-mnist_inf``, ``fashion-mnist_eps10``, ``fashion-mnist_05noise``."""
    return f"{dataset}_{tag}"


def _dp_scenario(dataset: str, epsilon: float) -> Scenario:
    if math.isnan(epsilon) or epsilon <= 0:
        raise ConfigError(f"an epsilon must be positive (or inf), got {epsilon:g}")
    defences = () if epsilon == math.inf else check([defence_from(f"dp:epsilon={epsilon!r},part=model")])
    return Scenario(scenario_name(dataset, _epsilon_text(epsilon)), defences)


def scenarios_for(dataset: str, epsilons: Iterable[float], defences: Iterable[Defence | str] = ()) -> list[Scenario]:
    """A scenario per ε (``inf``: no defence; else DP-SGD on the whole model) and per defence, named by its key."""
    scenarios = [_dp_scenario(dataset, float(epsilon)) for epsilon in epsilons]
    for given in defences:
        defence = check([defence_from(given)])[0]
        scenarios.append(Scenario(scenario_name(dataset, defence.key()), (defence,)))
    names = [scenario.name for scenario in scenarios]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"scenario {repeated[0]} is asked for twice")
    if not scenarios:
        raise ConfigError("no scenarios to build: give --epsilons or --defence")
    return scenarios


def stackable(defences: Sequence[Defence]) -> bool:
    """Whether models with ``defences`` can be trained stacked: each acts only through the wire and loss terms.

    A defence that wraps the optimiser or the loader (DP-SGD), needs Lightning callbacks
    (suppress-privacy) or trains a companion beside the model (adversarial) is trained by
    :func:`~dpsnn.training.train_classifier`, one model at a time.
    """
    return all(
        type(d).wrap is Defence.wrap and type(d).callbacks is Defence.callbacks and d.companion() is None
        for d in defences
    )


def trainer_of(scenario: Scenario) -> str:
    """``"stacked"`` (:func:`~dpsnn.shadows.train_scheduled`) where :func:`stackable`, else ``"lightning"``."""
    return "stacked" if stackable(scenario.defences) else "lightning"


# --------------------------------------------------------------------------------------- models


def phase_counts(models: int) -> dict[str, int]:
    """How many of ``models`` go to each phase: ⌈K/2⌉ train, ⌈(K − train)/2⌉ dev, the rest final."""
    if not MIN_MODELS <= models <= MAX_MODELS:
        raise ConfigError(f"--models must lie between {MIN_MODELS} and {MAX_MODELS} (MICO's numbering), got {models}")
    train = -(-models // 2)
    dev = -(-(models - train) // 2)
    return {"train": train, "dev": dev, "final": models - train - dev}


def planned_models(models: int) -> list[tuple[str, int]]:
    """``(phase, MICO number)`` of every model of a scenario of ``models`` models, phase by phase."""
    counts = phase_counts(models)
    return [(phase, PHASE_MODELS[phase].start + j) for phase in PHASES for j in range(counts[phase])]


def _torch_seed(base_seed: int, index: int) -> int:
    digest = hashlib.sha256(f"dpsnn.mico.build/{base_seed}/{index}/torch".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: Lightning's seed range, unrelated to the split


# ------------------------------------------------------------------------------------- manifest


def read_manifest(task: str | Path) -> dict[str, Any]:
    """The ``build.json`` of a built task; :class:`DataError` when there is none or it is not one."""
    path = Path(task) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{task}: no {MANIFEST_FILE}; it was not built by 'mico.py build'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path} is not valid JSON; move it aside or rebuild the task") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUILD_FORMAT:
        raise DataError(f"{path} is not a build manifest of format {BUILD_FORMAT}")
    return manifest


def is_built_task(task: str | Path) -> bool:
    """Whether ``task`` is a task folder written by :func:`build_task` (it holds ``build.json``)."""
    return (Path(task) / MANIFEST_FILE).is_file()


def _merged_manifest(task: Path, settings: BuildSettings, scenarios: Sequence[Scenario], models: int) -> dict:
    wanted = dataclasses.asdict(settings)
    entries = {
        scenario.name: {"defences": canonical(scenario.defences), "models": models, "trainer": trainer_of(scenario)}
        for scenario in scenarios
    }
    if not (task / MANIFEST_FILE).is_file():
        if task.is_dir() and any(entry.name != LOCK_FILE for entry in task.iterdir()):
            raise ConfigError(f"{task} holds files but no {MANIFEST_FILE}; build into an empty or new folder")
        return {"format": BUILD_FORMAT, "settings": wanted, "scenarios": entries}
    manifest = read_manifest(task)
    for name, value in wanted.items():
        if manifest["settings"].get(name) != value:
            raise ConfigError(
                f"{task} was built with {name}={manifest['settings'].get(name)!r}, not {value!r}; "
                "use another --output or the same settings"
            )
    for name, entry in entries.items():
        before = manifest["scenarios"].get(name, entry)
        if before["defences"] != entry["defences"]:
            raise ConfigError(f"{task}: scenario {name} was built with {before['defences']}, not {entry['defences']}")
        if before.get("trainer", "lightning") != entry["trainer"]:
            raise ConfigError(
                f"{task}: scenario {name}'s models were trained by the {before.get('trainer', 'lightning')} trainer, "
                f"which this version no longer uses for them; build into another --output"
            )
        if models < before["models"]:
            raise ConfigError(f"{task}: scenario {name} holds {before['models']} models; --models cannot go below that")
    return {**manifest, "scenarios": {**manifest["scenarios"], **entries}}


def _write_manifest(task: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(task / MANIFEST_FILE) as partial:
        partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def _locked(task: Path) -> Iterator[None]:
    lock = try_lock(task / LOCK_FILE)
    if lock is None:
        raise ConfigError(f"another builder is writing {task} (it holds {task / LOCK_FILE})")
    try:
        yield
    finally:
        release_lock(lock)


# ------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_task` did: the task folder, the model folders it trained and those already there."""

    task: Path
    built: list[Path]
    skipped: list[Path]


def _load_pool(dataset: str, data_dir: Path, system_dir: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return load_images(dataset, True, data_dir, system_dir, download)


def _check_scenarios(settings: BuildSettings, scenarios: Sequence[Scenario], images: torch.Tensor) -> None:
    """Build each scenario's network once, so an architecture or defence that cannot work fails before training."""
    for scenario in scenarios:
        SplitNN(
            architecture=settings.architecture,
            defences=scenario.defences,
            num_classes=dataset_info(settings.dataset).num_classes,
            input_shape=tuple(images.shape[1:]),
        )


def _train_model(
    settings: BuildSettings, scenario: Scenario, split: Any, images: torch.Tensor, labels: torch.Tensor, seed: int
) -> tuple[SplitNN, int]:
    def take(index: torch.Tensor) -> Split:
        return Split(images[index], labels[index])

    validation = take(split.evaluation[: settings.val_size])
    empty = take(split.evaluation[:0])
    splits = Splits(
        settings.dataset, seed, dataset_info(settings.dataset).num_classes, take(split.train), validation, empty, empty
    )
    return train_classifier(
        splits,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        max_epochs=settings.epochs,
        seed=seed,
        progress=False,
        architecture=settings.architecture,
        defences=scenario.defences,
        keep=settings.keep,
    )


def _stage(folder: Path, phase: str, index: int, settings: BuildSettings, pool_size: int) -> tuple[Path, Any]:
    """Write model ``index``'s seeds (and solution) into the staging folder; its staged folder and split."""
    seeds: ChallengeSeeds = draw_seeds(settings.seed, index)
    split = challenge_split(pool_size, settings.len_training, seeds, settings.len_challenge)
    staged = folder.parent.parent / STAGING_FOLDER / phase / folder.name
    shutil.rmtree(staged, ignore_errors=True)  # what an interrupted build left
    write_model_folder(staged.parent.parent, phase, index, seeds, split.solution if phase == "train" else None)
    return staged, split


def _finish(folder: Path, staged: Path, model: SplitNN, epoch: int, scenario: Scenario, phase: str, index: int) -> None:
    """Save ``model`` into its staged folder and rename the folder into place: it exists only when whole."""
    extra = {"mico_scenario": scenario.name, "mico_phase": phase, "mico_index": index}
    save_checkpoint(model, model_weights_path(staged), "classifier", epoch, extra)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(folder)


def _build_group(
    jobs: Sequence[tuple[Scenario, str, int, Path]], settings: BuildSettings, pool: tuple, strategy: str, progress: bool
) -> None:
    """Train the models ``jobs`` (one scenario) and write each folder whole: staged, then renamed into place."""
    scenario = jobs[0][0]
    staging = jobs[0][3].parent.parent / STAGING_FOLDER
    shutil.rmtree(staging, ignore_errors=True)
    staged = [_stage(folder, phase, index, settings, len(pool[1])) for _, phase, index, folder in jobs]
    if trainer_of(scenario) == "stacked":
        splits = [(index, split) for (_, _, index, _), (_, split) in zip(jobs, staged, strict=True)]
        trained = _train_stacked(settings, scenario, splits, pool, strategy, progress)
    else:
        (_, _, index, _), (_, split) = jobs[0], staged[0]
        trained = [_train_model(settings, scenario, split, *pool, _torch_seed(settings.seed, index))]
    for (_, phase, index, folder), (path, _), (model, epoch) in zip(jobs, staged, trained, strict=True):
        _finish(folder, path, model, epoch, scenario, phase, index)
    shutil.rmtree(staging, ignore_errors=True)


def _groups(
    todo: Sequence[tuple[Scenario, str, int, Path]], group_size: int
) -> list[list[tuple[Scenario, str, int, Path]]]:
    """``todo`` cut into groups trained at once: up to ``group_size`` models of one stacked scenario, else one."""
    groups: list[list[tuple[Scenario, str, int, Path]]] = []
    for job in todo:
        last = groups[-1] if groups else None
        joins = last is not None and last[0][0] == job[0] and trainer_of(job[0]) == "stacked"
        if joins and len(last) < group_size:
            last.append(job)
        else:
            groups.append([job])
    return groups


class _BestEpochs:
    """After each epoch, each model's accuracy on its own validation points; keeps each model's best state.

    A model's state is kept when its accuracy is strictly above its best so far, so the first of
    equal epochs wins, as with :func:`~dpsnn.training.train_classifier`'s checkpointing.
    """

    def __init__(self, base: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, vals: list[torch.Tensor]):
        self.base, self.images, self.labels, self.vals = base, images, labels, vals
        self.accuracy = [-1.0] * len(vals)
        self.epoch = [0] * len(vals)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in vals]

    def __call__(self, epoch: int, which: list[int], params: dict, buffers: dict) -> None:
        self.base.eval()
        x = torch.stack([self.images[self.vals[i]] for i in which])  # (S, V, ...)
        y = torch.stack([self.labels[self.vals[i]] for i in which])

        def one(p: dict, b: dict, images: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (images,))

        logits = vmap(one, randomness="different")(params, buffers, x)
        accuracy = (logits.argmax(-1) == y).float().mean(dim=1).tolist()
        for j, i in enumerate(which):
            if accuracy[j] > self.accuracy[i]:
                self.accuracy[i], self.epoch[i] = accuracy[j], epoch
                self.state[i] = {name: t[j].clone() for name, t in {**params, **buffers}.items()}


def _train_stacked(
    settings: BuildSettings,
    scenario: Scenario,
    jobs: Sequence[tuple[int, Any]],
    pool: tuple[torch.Tensor, torch.Tensor],
    strategy: str,
    progress: bool,
) -> list[tuple[SplitNN, int]]:
    """Train the models ``jobs`` (``(index, split)``) of a stackable scenario at once; each at its kept epoch.

    Model ``k`` starts from weights drawn under its own torch seed and takes its mini-batches in
    an order drawn from that seed (:func:`~dpsnn.shadows.batch_schedule` over its training points:
    each epoch a fresh shuffle, topped up to whole batches), so its training does not depend on
    which models share its group; wire noise is drawn from one generator seeded by the group's
    first model. Adam at ``settings.learning_rate``, ``settings.epochs`` epochs.
    """
    images, labels = pool
    seeds = [_torch_seed(settings.seed, index) for index, _ in jobs]
    models, orders = [], []
    for seed, (_, split) in zip(seeds, jobs, strict=True):
        torch.manual_seed(seed)
        models.append(_new_model(settings, scenario, images, seed))
        members = torch.zeros(len(labels), dtype=torch.bool)
        members[split.train] = True
        orders.append(batch_schedule(members[None], settings.batch_size, settings.epochs, seed))
    schedule = torch.cat(orders, dim=2)  # (epochs, batches, S, B)
    vals = [split.evaluation[: settings.val_size] for _, split in jobs]
    best = _BestEpochs(copy.deepcopy(models[0]).to("meta"), images, labels, vals)
    recipe = ShadowRecipe(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate)
    torch.manual_seed(seeds[0])
    on_epoch = best if settings.keep == "best" else None
    desc = f"{scenario.name}, {len(models)} models"
    _, params, buffers = train_scheduled(models, images, labels, schedule, recipe, strategy, progress, on_epoch, desc)
    if settings.keep == "last":
        best.state = [{name: t[j] for name, t in {**params, **buffers}.items()} for j in range(len(models))]
        best.epoch = [settings.epochs - 1] * len(models)
    for model, state in zip(models, best.state, strict=True):
        model.load_state_dict(state)
        model.eval()
    return list(zip(models, best.epoch, strict=True))


def _new_model(settings: BuildSettings, scenario: Scenario, images: torch.Tensor, seed: int) -> SplitNN:
    """An untrained model with the hyperparameters :func:`~dpsnn.training.train_classifier` records."""
    return SplitNN(
        architecture=settings.architecture,
        defences=scenario.defences,
        learning_rate=settings.learning_rate,
        num_classes=dataset_info(settings.dataset).num_classes,
        input_shape=tuple(images.shape[1:]),
        dataset=settings.dataset,
        seed=seed,
        train_size=settings.len_training,
    ).train()


def build_task(
    output: str | Path,
    settings: BuildSettings,
    scenarios: Sequence[Scenario],
    models: int,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
    progress: bool = True,
    strategy: str = "auto",
    group_size: int = DEFAULT_GROUP_SIZE,
) -> BuildReport:
    """Build (or finish) the task ``<output>/<dataset>``: ``models`` models of every scenario; see the module.

    ``strategy`` is how a stacked scenario's group of up to ``group_size`` models is trained
    (:func:`~dpsnn.shadows.train_scheduled`: ``together``, ``one-by-one`` or ``auto``); both give
    the same models up to float rounding, so it is not recorded.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown training strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if group_size < 1:
        raise ConfigError(f"group_size must be positive, got {group_size}")
    plan = planned_models(models)
    images, labels = _load_pool(settings.dataset, Path(data_dir), Path(system_dir), download)
    settings = settings.resolved(len(labels))
    _check_scenarios(settings, scenarios, images)
    task = Path(output) / settings.dataset
    built: list[Path] = []
    with _locked(task):
        _write_manifest(task, _merged_manifest(task, settings, scenarios, models))
        jobs = [(s, phase, index, task / s.name / phase / f"model_{index}") for s in scenarios for phase, index in plan]
        skipped = [folder for *_, folder in jobs if folder.is_dir()]
        todo = [job for job in jobs if not job[3].is_dir()]
        bar = tqdm(
            total=len(todo), desc=f"MICO build ({len(skipped)} done)", unit="model", disable=None if progress else True
        )
        for group in _groups(todo, group_size):
            bar.set_postfix_str(
                f"{group[0][0].name}/{group[0][1]}/model_{group[0][2]}"
                + (f" +{len(group) - 1}" if len(group) > 1 else "")
            )
            _build_group(group, settings, (images, labels), strategy, progress and len(group) > 1)
            built += [folder for *_, folder in group]
            bar.update(len(group))
        bar.close()
    return BuildReport(task, built, skipped)


# -------------------------------------------------------------------------------------- loading


def load_built_model(folder: str | Path) -> SplitNN:
    """The model of a built model folder (its ``model.pt``, a dpsnn classifier checkpoint), in eval mode."""
    folder = Path(folder)
    model = load_classifier(model_weights_path(folder))
    recorded = getattr(model, "checkpoint_extra", {}).get("mico_index")
    if recorded is not None and recorded != model_index(folder):
        raise DataError(f"{folder}: its model.pt is model {recorded}'s; the folder was renamed or mixed up")
    return model


def built_dataset(
    task: str | Path,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    system_dir: str | Path = SYSTEM_DATA_DIR,
    download: bool = True,
) -> MicoDataset:
    """The pool a built task's splits index (the dataset's official training set), as a :class:`MicoDataset`.

    Its ``task`` is the dataset's name; the sizes to rebuild splits with are in ``read_manifest(task)["settings"]``.
    """
    dataset = read_manifest(task)["settings"]["dataset"]
    images, labels = _load_pool(dataset, Path(data_dir), Path(system_dir), download)
    return MicoDataset(task=dataset, inputs=images, labels=labels)


def write_reference_solutions(task: str | Path, output: str | Path, pool_size: int) -> list[Path]:
    """Write every built model's ``solution.csv``, ``dev`` and ``final`` too, into a tree of the task's layout.

    The organisers' reference data: ``<output>/<dataset>/<scenario>/<phase>/model_k/solution.csv``,
    regenerated from ``build.json``'s seed, for the model folders that exist. Score any phase against
    it (``mico.py score --solutions <output> --phase dev --phase final``). ``pool_size`` is the
    number of points the splits index (``len(built_dataset(task))``). Returns the files written.
    """
    task = Path(task)
    manifest = read_manifest(task)
    settings = manifest["settings"]
    reference = Path(output) / settings["dataset"]
    if reference.resolve() == task.resolve():
        raise ConfigError(f"{output}: the reference solutions go into another tree than the task's")
    written = []
    for scenario in sorted(manifest["scenarios"]):
        for phase in PHASES:
            for folder in sorted((task / scenario / phase).glob("model_*")):
                if not model_weights_path(folder).is_file():
                    continue
                index = model_index(folder)
                seeds = draw_seeds(settings["seed"], index)
                split = challenge_split(pool_size, settings["len_training"], seeds, settings["len_challenge"])
                target = model_folder(reference / scenario, phase, index)
                target.mkdir(parents=True, exist_ok=True)
                write_solution(target, split.solution)
                written.append(target / "solution.csv")
    return written
