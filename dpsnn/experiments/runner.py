"""Run experiment suites, resumably: each finished run is recorded at once and never redone.

A run trains (or reloads) its target model, attacks it on exactly what the server sees
and scores both on the test split; its row goes into ``runs.csv`` the moment it is done
(see :mod:`dpsnn.experiments.store`). Trained models are kept in ``models_dir``, so the
many attacks on one model (post-noise, data volume, aux shift) train it once, and a run
killed half-way restarts from its model. Example::

    from dpsnn.experiments.runner import ExperimentRunner
    from dpsnn.experiments.suites import QUICK

    runner = ExperimentRunner(QUICK, "fashion-mnist", "results/experiments-quick", "models/experiments-quick")
    done = runner.run(["noise", "nopeek"], seeds=2)   # the number of runs it did now

A run trains the model with ``train_classifier(architecture=..., defences=...)``, puts
the configuration's inference defences on its wire, fits the configuration's attack
(``Attack.fit``) and scores it with :func:`dpsnn.evaluation.evaluate_attack` (inversion:
reconstructions of the test split) or :func:`dpsnn.evaluation.evaluate_membership`
(membership: the budget's ``membership_candidates``, half of them drawn from the target's
training split and half from the test split); every metric the result names, and every
number the defences' ``measures`` report, is recorded.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpsnn.attacks.base import AttackTraining, MembershipScores, Reconstructions, attack_from
from dpsnn.attacks.best_of import DECODER_ATTACKS
from dpsnn.checkpoints import VALIDATORS_DIR, load_attacker, load_classifier, save_checkpoint
from dpsnn.data import DEFAULT_DATA_DIR, SYSTEM_DATA_DIR, Split, Splits, ensure_dataset, make_splits
from dpsnn.errors import ConfigError, DataError, TrainingDiverged
from dpsnn.evaluation import evaluate_attack, evaluate_classifier, evaluate_membership, reconstruct
from dpsnn.experiments.store import SAMPLES_DIR, RunStore, current_code_version
from dpsnn.experiments.suites import (
    OTHER_DATASET,
    SUITES,
    Budget,
    Grid,
    RunConfig,
    expand_suites,
    suites_of,
    undefended_config,
)
from dpsnn.files import atomic_path
from dpsnn.models import SplitNN
from dpsnn.training import obtain_validator, train_classifier

ATTACKERS_DIR = "attackers"  # under models_dir: the fitted decoders, for best-of to choose among
N_SAMPLES = 8  # test images whose reconstructions are kept (first seed only) for the figures


# Counts that evaluate_attack and evaluate_membership return beside their metrics (n_test has its own column).
COUNTS = frozenset({"n_test", "n_aux_baseline", "n_candidates", "n_members"})


def defence_measures(model: SplitNN) -> dict[str, float]:
    """What each defence reports about the trained model, as ``<defence>_<measure>`` metric columns."""
    row: dict[str, float] = {}
    for defence in model.defences:
        prefix = defence.name.replace("-", "_")
        row |= {f"{prefix}_{name}": float(value) for name, value in defence.measures(model).items()}
    return row


def class_half(split: Split, num_classes: int, upper: bool = False) -> Split:
    """The images of the first (or, with ``upper``, the second) half of the classes."""
    keep = (split.labels >= num_classes // 2) if upper else (split.labels < num_classes // 2)
    return Split(split.images[keep], split.labels[keep])


def available_dataset(name: str, data_dir: str | Path, system_dir: str | Path = SYSTEM_DATA_DIR) -> bool:
    """Whether ``name`` is on this machine already (nothing is downloaded to find out)."""
    try:
        ensure_dataset(name, data_dir, system_dir, download=False)
    except DataError:
        return False
    return True


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` deterministic parts of a grid (1-based): ``--shard 2/4``.

    A run belongs to the shard its trained model hashes to (:func:`shard_of`), so every
    attack on one model, and the decoders ``best-of`` reuses, stay in one shard. Whether a
    suite's grid extends past its last value is decided in the shard that holds that last
    value at seed 0, so the whole extension chain runs there; it also needs the undefended
    run of seed 0, which that shard runs itself if another shard holds it (the merge then
    keeps one copy).
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and isinstance(self.index, int) and 1 <= self.index <= self.count):
            raise ConfigError(f"a shard is K/N with 1 <= K <= N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/4"`` as a shard; :class:`ConfigError` for anything else."""
        index, slash, count = text.partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise ConfigError(f"a shard is K/N with 1 <= K <= N (as in 2/4), got '{text}'")
        return cls(int(index), int(count))

    def owns(self, config: RunConfig) -> bool:
        return shard_of(config, self.count) == self.index

    @property
    def folder_name(self) -> str:
        """The shard's results folder under ``<results-dir>/shards/``: ``2-of-4``."""
        return f"{self.index}-of-{self.count}"


def shard_of(config: RunConfig, count: int) -> int:
    """The shard (1..count) of ``config``: a stable hash of its model's key, the same on every machine."""
    digest = hashlib.sha256(config.model_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass
class ExperimentRunner:
    """Runs suites of :class:`RunConfig` on one dataset, recording each run in ``results_dir``."""

    budget: Budget
    dataset: str
    results_dir: str | Path
    models_dir: str | Path
    data_dir: str | Path = DEFAULT_DATA_DIR
    validators_dir: str | Path = VALIDATORS_DIR
    progress: bool = True
    say: Callable[[str], None] | None = print  # where a line such as "migrated ..." goes
    shard: Shard | None = None  # run only this shard's part of every grid
    read_also: tuple[Path, ...] = ()  # results folders whose runs count as done (a shard: the merged table)

    def __post_init__(self) -> None:
        self.results_dir, self.models_dir = Path(self.results_dir), Path(self.models_dir)
        self._splits: dict[tuple[str, int], Splits] = {}
        self._code = current_code_version()
        self._shared: tuple[str, dict[Any, Any]] = ("", {})  # what the shadow attacks on one target share

    # -- planning -------------------------------------------------------------------

    def other_dataset(self) -> str | None:
        """The second dataset for ``aux-shift``, if it is on this machine."""
        other = OTHER_DATASET.get(self.dataset)
        return other if other and available_dataset(other, self.data_dir) else None

    def planned(self, suites: Iterable[str], seed: int) -> list[RunConfig]:
        """The fixed configurations of ``suites`` for ``seed``, each once, in order."""
        other = self.other_dataset()
        configs: list[RunConfig] = []
        for suite in expand_suites(suites):
            for config in SUITES[suite].configs(self.dataset, self.budget, seed, other):
                if config not in configs:
                    configs.append(config)
        return configs

    # -- running --------------------------------------------------------------------

    def run(self, suites: Iterable[str], seeds: int, on_row: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Run every configuration of ``suites`` for seeds ``0..seeds-1``; return how many ran now.

        Runs go seed by seed, so an interrupted call leaves whole seeds behind it. Grids
        with an extension (noise, nopeek) grow on the first seed until accuracy
        collapses; later seeds repeat the values the first seed needed.
        """
        suites = expand_suites(suites)
        done_now = 0
        with RunStore(self.results_dir, read_also=self.read_also) as store:
            if store.migrated and self.say:
                self.say(store.migrated)
            for seed in range(seeds):
                for config in self.planned(suites, seed):
                    if self.shard is None or self.shard.owns(config):
                        done_now += self._run_once(config, store, on_row)
                for suite in suites:
                    if not self._owns_extensions(suite):
                        continue
                    if self.shard is not None and seed == 0:  # the chain's decisions need the undefended run
                        done_now += self._run_once(undefended_config(self.dataset, self.budget, 0), store, on_row)
                    for config in self._extensions(suite, seed, store):
                        done_now += self._run_once(config, store, on_row)
        return done_now

    def _owns_extensions(self, suite: str) -> bool:
        """Whether this runner decides and runs ``suite``'s extension values (always, unless sharded)."""
        entry = SUITES[suite]
        if not entry.extension_configs(self.dataset, self.budget, 0):
            return False
        if self.shard is None:
            return True
        grid = entry.configs(self.dataset, self.budget, 0)
        return bool(grid) and self.shard.owns(grid[-1])

    def _extensions(self, suite: str, seed: int, store: RunStore) -> Iterable[RunConfig]:
        """The extension values of ``suite`` for ``seed``, decided one at a time."""
        first_seed = 0
        entry = SUITES[suite]
        grid = entry.configs(self.dataset, self.budget, first_seed)
        for config in entry.extension_configs(self.dataset, self.budget, seed):
            at_first_seed = replace(config, seed=first_seed)
            if seed != first_seed:
                if store.get(at_first_seed.key) is None:
                    return
                yield config
                continue
            tried = grid + entry.extension_configs(self.dataset, self.budget, first_seed)
            previous = tried[tried.index(at_first_seed) - 1]
            if self._has_collapsed(previous, store, entry.grid(self.budget)):
                return
            yield config

    def _has_collapsed(self, config: RunConfig, store: RunStore, grid: Grid) -> bool:
        """Whether ``config``'s run ends its suite's extension (``grid``'s stop rule, or nothing to extend from)."""
        row = store.get(config.key)
        plain = store.get(undefended_config(self.dataset, self.budget, config.seed).key)
        if row is None or plain is None:
            return True  # nothing to extend from
        if row["status"] != "ok" or math.isnan(row["accuracy"]):
            return True
        return grid.stops(row["accuracy"], plain["accuracy"], self.splits(self.dataset, config.seed).num_classes)

    def _run_once(self, config: RunConfig, store: RunStore, on_row: Callable[[dict[str, Any]], None] | None) -> int:
        if config.key in store.finished():
            return 0
        row = self.measure(config)
        store.add(row)
        if on_row:
            on_row(row)
        return 1

    # -- one measurement ------------------------------------------------------------

    def splits(self, dataset: str, seed: int) -> Splits:
        key = (dataset, seed)
        if key not in self._splits:
            own = dataset == self.dataset
            self._splits[key] = make_splits(
                dataset,
                seed=seed,
                train_size=self.budget.train_size if own else None,
                val_size=self.budget.val_size,
                aux_size=self.budget.aux_split_size,
                test_size=self.budget.test_size if own else None,
                root=self.data_dir,
            )
        return self._splits[key]

    def model_path(self, config: RunConfig) -> Path:
        return self.models_dir / f"{config.model_key}_{self.budget.name}.ckpt"

    def target_model(self, config: RunConfig) -> tuple[SplitNN, int, float]:
        """The trained model of ``config``: reloaded if an earlier run trained it. Returns it, its epoch, seconds."""
        path = self.model_path(config)
        if path.is_file():
            model = load_classifier(path)
            return model, model.checkpoint_epoch, 0.0
        started = time.perf_counter()
        model, epoch = train_classifier(
            self.splits(config.dataset, config.seed),
            architecture=config.architecture,
            defences=config.defences,
            learning_rate=self.budget.model_learning_rate or self.budget.learning_rate,
            lr_schedule=self.budget.model_lr_schedule,
            batch_size=self.budget.batch_size,
            max_epochs=self.budget.model_epochs,
            seed=config.seed,
            progress=self.progress,
        )
        save_checkpoint(model, path, "classifier", epoch)
        return model, epoch, time.perf_counter() - started

    def attack_data(self, config: RunConfig, splits: Splits) -> tuple[Split, Split, Split]:
        """The attacker's auxiliary split, the label-only baseline's, and the test split of ``config``."""
        test, aux = splits.test, splits.aux
        if config.test_classes == "lower-half":
            test = class_half(test, splits.num_classes)
        if config.aux_source == "same":
            attacker_aux = aux
        elif config.aux_source == "other-classes":
            attacker_aux = class_half(aux, splits.num_classes, upper=True)
        else:
            attacker_aux = self.splits(config.aux_source, config.seed).aux
        if config.aux_size > len(attacker_aux):
            raise ConfigError(
                f"{config.label()} asks for {config.aux_size} auxiliary images; the split has {len(attacker_aux)}"
            )
        # The baseline needs every class of the target: its own dataset's auxiliary split.
        return attacker_aux.subset(config.aux_size), aux.subset(config.aux_size), test

    def measure(self, config: RunConfig) -> dict[str, Any]:
        """Train what ``config`` needs, attack, score; the row for ``runs.csv``."""
        row: dict[str, Any] = {
            "key": config.key,
            "budget": self.budget.name,
            "suites": " ".join(suites_of(config, self.budget)),
            **config.as_row(),
            "code": self._code,
        }
        splits = self.splits(config.dataset, config.seed)
        try:
            target, epoch, model_seconds = self.target_model(config)
        except TrainingDiverged as error:
            return row | {"status": "diverged", "note": str(error)}
        row |= {"best_epoch": epoch, "model_seconds": model_seconds}
        row |= defence_measures(target)
        if config.inference_defences is not None:
            target.set_wire(config.inference_defences)
        attacker_aux, baseline_aux, test = self.attack_data(config, splits)
        started = time.perf_counter()
        row |= evaluate_classifier(target, test, seed=config.seed)
        test = test.subset(config.attack.test_images)  # accuracy is on every test image, the attack maybe on fewer
        row |= {"n_aux": len(attacker_aux), "n_test": len(test)}
        training = AttackTraining(
            learning_rate=self.budget.learning_rate,
            batch_size=self.budget.batch_size,
            max_steps=self.budget.attack_steps,
            progress=self.progress,
            shared=self.shared_with(config),
        )
        try:
            attacker = self.fit_attack(config, target, attacker_aux, training)
        except TrainingDiverged as error:
            return row | {"status": "diverged", "note": str(error), "attack_seconds": time.perf_counter() - started}
        if issubclass(config.attack.result, MembershipScores):
            measured = self.score_membership(config, target, attacker, splits, test)
            row["n_test"] = measured["n_candidates"]  # what a membership attack is scored on: its candidates
        else:
            validator = obtain_validator(
                splits,
                self.validators_dir,
                max_epochs=self.budget.validator_epochs,
                train_size=self.budget.validator_train_size,
                progress=self.progress,
            )
            measured = evaluate_attack(target, attacker, test, baseline_aux, validator=validator, seed=config.seed)
        row |= {name: value for name, value in measured.items() if name not in COUNTS and "_ci_" not in name}
        row |= {"status": "ok", "attack_seconds": time.perf_counter() - started}
        if config.seed == 0 and issubclass(config.attack.result, Reconstructions):
            self._keep_samples(config, target, attacker, test, baseline_aux)
        return row

    def attacker_path(self, config: RunConfig) -> Path:
        """Where the fitted attacker of ``config`` is kept (attacks with weights of their own)."""
        return self.models_dir / ATTACKERS_DIR / f"{config.key}_{self.budget.name}.ckpt"

    def shared_with(self, config: RunConfig) -> dict[Any, Any]:
        """What the shadow attacks on ``config``'s target, wire and auxiliary data share (the latest one's only)."""
        scope = replace(config, attack="chance").key  # everything but the attack
        if self._shared[0] != scope:
            self._shared = (scope, {})
        return self._shared[1]

    def fit_attack(self, config: RunConfig, target: SplitNN, aux: Split, training: AttackTraining) -> Any:
        """``config``'s attack fitted on ``aux``; an attacker with weights is kept for ``best-of`` to reuse.

        ``best-of`` chooses among the decoders that the runs of the same target on the first
        ``len(aux) · (1 - holdout)`` auxiliary images fitted (reloaded, or fitted and kept now).
        """
        if config.attack.name == "best-of":
            fit_part, _ = config.attack.split_aux(aux)
            members = {
                name: self.fitted_member(
                    replace(config, attack=name, aux_size=len(fit_part)), target, fit_part, training
                )
                for name in DECODER_ATTACKS
            }
            return config.attack.fit(target, aux, training, seed=config.seed, members=members)
        attacker = config.attack.fit(target, aux, training, seed=config.seed)
        if isinstance(attacker, nn.Module) and config.attack.name in DECODER_ATTACKS:
            save_checkpoint(attacker, self.attacker_path(config), "attacker", 0)
        return attacker

    def fitted_member(self, config: RunConfig, target: SplitNN, aux: Split, training: AttackTraining) -> Any:
        """The decoder of ``config`` as its own run fitted it, or fitted now on ``aux`` just as that run would."""
        path = self.attacker_path(config)
        if path.is_file():
            return load_attacker(path)
        return self.fit_attack(config, target, aux, training)

    def score_membership(
        self, config: RunConfig, target: SplitNN, attacker: Any, splits: Splits, test: Split
    ) -> dict[str, float]:
        """A fitted membership attack scored on candidates from the target's training split and ``test``."""
        from dpsnn.attacks.membership import membership_candidates

        n = min(self.budget.membership_candidates, 2 * len(splits.train), 2 * len(test))
        candidates, members = membership_candidates(splits.train, test, n, seed=config.seed)
        return evaluate_membership(target, attacker, candidates, members, seed=config.seed)

    def _keep_samples(
        self,
        config: RunConfig,
        target: SplitNN,
        attacker: Any,
        test: Split,
        baseline_aux: Split,
    ) -> None:
        """Reconstructions of the first test images (and the baseline's), for the figures."""
        originals = test.images[:N_SAMPLES]
        baseline = attack_from(config.attack.result.baseline).fit(target, baseline_aux, seed=config.seed)
        attack, label_only = reconstruct(target, attacker, originals, baseline, seed=config.seed)
        # Half precision: plenty for an image, and a third of the size of the committed results.
        samples = {
            name: images.half()
            for name, images in (("originals", originals), ("attack", attack), ("baseline", label_only))
        }
        with atomic_path(self.results_dir / SAMPLES_DIR / f"{config.key}.pt") as partial:
            torch.save(samples, partial)
