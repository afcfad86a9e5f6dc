"""How many runs a set of suites needs, and a forecast of their cost from the runs already timed.

A grid's size decides whether the whole ``all`` suite fits a night on a small machine, so it
is worth knowing before the first run. :func:`plan` lists every run ``run_experiments.py``
would make for some suites and seeds: the fixed grid, and each grid's extension values as an
upper bound (they run only while accuracy has not collapsed). :class:`Timings` reads the
seconds the run store recorded: a target model's training time by its family of defences
(``none``, ``laplace``, ``dp``, ``laplace+nopeek``, …) and an attack's time by its name. The
forecast of a plan is the sum, over the runs not finished yet, of the mean time of their
attack and of the models they still need to train, with a standard error from the spread of
those times. Timings come from the rows of the same budget where there are any, else from
every row (and the forecast says so). Example::

    from dpsnn.experiments.plan import Timings, forecast, plan
    from dpsnn.experiments.runner import ExperimentRunner
    from dpsnn.experiments.store import read_runs
    from dpsnn.experiments.suites import FULL

    runner = ExperimentRunner(FULL, "fashion-mnist", "results/experiments", "models/experiments")
    runs = plan(runner, ["noise", "nopeek"], seeds=3)
    forecast(runs, Timings.from_rows(read_runs("results/experiments"), FULL.name)).core_hours
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpsnn.attacks.base import attack_from
from dpsnn.defences import Defence, parse_canonical
from dpsnn.experiments.suites import SUITES, RunConfig, expand_suites

if TYPE_CHECKING:
    from dpsnn.experiments.runner import ExperimentRunner

ANY = "*"  # the timing group of every model, or every attack, when a family has no row


@dataclass(frozen=True)
class PlannedRun:
    """One run a plan contains: the first suite that plans it, and what is known of it already."""

    suite: str
    config: RunConfig
    extension: bool  # an extension value: it runs only if the grid has not collapsed before it
    finished: bool  # already in the run store
    model_trained: bool  # its target model is already on disk (or an earlier run of the plan trains it)


def family(defences: Iterable[Defence]) -> str:
    """The family of some defence specs: ``laplace(scale=1)`` and ``nopeek(weight=1)`` -> ``'laplace+nopeek'``."""
    return "+".join(defence.name for defence in defences) or "none"


def plan(runner: ExperimentRunner, suites: Iterable[str], seeds: int, finished: Iterable[str] = ()) -> list[PlannedRun]:
    """Every run of ``suites`` for seeds ``0..seeds-1``, extensions included, each once, in run order.

    ``runner`` is an :class:`~dpsnn.experiments.runner.ExperimentRunner` (its dataset,
    budget and model folder); ``finished`` holds the keys of runs already in its store.
    """
    finished = set(finished)
    suites = expand_suites(suites)
    runs: list[PlannedRun] = []
    seen: set[str] = set()
    models: set[str] = set()

    def add(suite: str, config: RunConfig, extension: bool) -> None:
        if config.key in seen:
            return
        seen.add(config.key)
        done = config.key in finished
        trained = config.model_key in models or runner.model_path(config).is_file()
        if not done:  # a finished run trains nothing now: its model is on disk or is trained again later
            models.add(config.model_key)
        runs.append(PlannedRun(suite, config, extension, done, trained))

    for seed in range(seeds):
        for suite in suites:
            for config in runner.planned([suite], seed):
                add(suite, config, extension=False)
        for suite in suites:
            for config in SUITES[suite].extension_configs(runner.dataset, runner.budget, seed):
                add(suite, config, extension=True)
    return runs


@dataclass(frozen=True)
class Estimate:
    """Mean seconds of one timing group, its standard error, and how many rows it rests on."""

    seconds: float
    se: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        return cls(mean, se, len(values))


@dataclass(frozen=True)
class Timings:
    """Mean training seconds of a target model by defence family, and of an attack by spec and by name."""

    models: Mapping[str, Estimate]
    attacks: Mapping[str, Estimate]
    same_budget: bool  # whether they come from rows of the budget asked for

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], budget: str) -> Timings:
        """Timings from run-store rows: those of ``budget`` if there are any, else all of them."""
        rows = [row for row in rows if row.get("status") == "ok"]
        own = [row for row in rows if row.get("budget") == budget]
        chosen = own or rows
        models: dict[str, list[float]] = {}
        attacks: dict[str, list[float]] = {}
        for row in chosen:
            if _positive(row.get("model_seconds")):  # 0: the model was trained by an earlier run
                models.setdefault(family(parse_canonical(str(row["defences"]))), []).append(float(row["model_seconds"]))
                models.setdefault(ANY, []).append(float(row["model_seconds"]))
            if _positive(row.get("attack_seconds")):  # by spec, by name, and all together
                for group in dict.fromkeys([str(row["attack"]), attack_from(str(row["attack"])).name, ANY]):
                    attacks.setdefault(group, []).append(float(row["attack_seconds"]))
        return cls(
            {name: Estimate.of(values) for name, values in models.items()},
            {name: Estimate.of(values) for name, values in attacks.items()},
            same_budget=bool(own),
        )

    def model(self, config: RunConfig) -> Estimate | None:
        return self.models.get(family(config.defences)) or self.models.get(ANY)

    def attack(self, config: RunConfig) -> Estimate | None:
        for group in (config.attack.spec(), config.attack.name, ANY):
            if group in self.attacks:
                return self.attacks[group]
        return None


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Forecast:
    """What a list of planned runs still costs, in seconds on one core, with its standard error."""

    runs: int  # not finished yet
    models: int  # target models still to train
    seconds: float
    se: float
    guessed: int  # runs whose family or attack has no timing of its own (the mean of all is used)
    untimed: int  # runs with no timing at all (an empty store): not in ``seconds``

    @property
    def core_hours(self) -> float:
        return self.seconds / 3600


def forecast(runs: Iterable[PlannedRun], timings: Timings) -> Forecast:
    """The cost of the unfinished runs among ``runs``: their attacks, and the models they still train."""
    todo = [run for run in runs if not run.finished]
    seconds = variance = 0.0
    guessed = untimed = models = 0
    for run in todo:
        parts = [timings.attack(run.config)]
        exact = run.config.attack.spec() in timings.attacks
        if not run.model_trained:
            models += 1
            parts.append(timings.model(run.config))
            exact = exact and family(run.config.defences) in timings.models
        if any(part is None for part in parts):
            untimed += 1
            continue
        guessed += not exact
        seconds += sum(part.seconds for part in parts)  # type: ignore[union-attr]
        variance += sum(part.se**2 for part in parts)  # type: ignore[union-attr]
    return Forecast(len(todo), models, seconds, math.sqrt(variance), guessed, untimed)


def plan_table(runs: Sequence[PlannedRun], timings: Timings) -> list[dict[str, Any]]:
    """One row per suite, then a total: runs planned (fixed, extension), finished, to train, forecast."""
    rows = []
    suites = list(dict.fromkeys(run.suite for run in runs))
    for name, part in [(suite, [run for run in runs if run.suite == suite]) for suite in suites] + [("total", runs)]:
        fixed = forecast([run for run in part if not run.extension], timings)
        every = forecast(part, timings)
        rows.append(
            {
                "suite": name,
                "runs": sum(not run.extension for run in part),
                "extension_runs_at_most": sum(run.extension for run in part),
                "finished": sum(run.finished for run in part),
                "core_hours": fixed.core_hours,
                "core_hours_se": fixed.se / 3600,
                "core_hours_with_extensions": every.core_hours,
                "core_hours_with_extensions_se": every.se / 3600,
                "models_to_train": every.models,
                "guessed_runs": every.guessed,
                "untimed_runs": every.untimed,
            }
        )
    return rows


def wall_hours(rows: Sequence[Mapping[str, Any]], cores: int) -> tuple[float, float]:
    """The total's hours of wall time on ``cores`` cores, one single-threaded shard per core (without, with extensions).

    A lower bound: it spreads the core-hours evenly, and shards are never exactly even.
    """
    total = next(row for row in rows if row["suite"] == "total")
    return total["core_hours"] / cores, total["core_hours_with_extensions"] / cores


def format_plan(
    rows: Sequence[Mapping[str, Any]], timings: Timings, results_dir: str | Path, cores: int | None = None
) -> str:
    """The plan as an aligned text table, a line on where its timings come from and, given ``cores``, the wall time."""
    header = ["suite", "runs", "+ext", "done", "core-h", "core-h with ext", "models", "guessed", "untimed"]
    lines = [
        [
            str(row["suite"]),
            str(row["runs"]),
            str(row["extension_runs_at_most"]),
            str(row["finished"]),
            f"{row['core_hours']:.2f} ± {row['core_hours_se']:.2f}",
            f"{row['core_hours_with_extensions']:.2f} ± {row['core_hours_with_extensions_se']:.2f}",
            str(row["models_to_train"]),
            str(row["guessed_runs"]),
            str(row["untimed_runs"]),
        ]
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *lines]
    ]
    source = "this budget's runs" if timings.same_budget else "runs of other budgets (none of this one is timed)"
    text.append(
        f"forecast in core-hours from the mean times of {source} in {results_dir}/runs.csv; "
        "+ext: extension values, run only while accuracy holds; guessed: timed by the mean of every "
        "model, or of the attack's name or every attack; untimed: no timing at all, not in the forecast"
    )
    if cores:
        low, high = wall_hours(rows, cores)
        text.append(
            f"on {cores} core(s), one single-threaded shard per core (`--shard K/{cores}`): at least "
            f"{low:.1f} h of wall time, {high:.1f} h with every extension value"
        )
    return "\n".join(text)
