"""Every analysis notebook runs top to bottom on a small results folder made by the runner."""

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_data import fake_mnist, write_mnist

from dpsnn.experiments.suites import SUITES
from dpsnn.mico.build import BuildSettings, build_task, built_dataset, scenarios_for
from dpsnn.mico.measure import MEASURE_COLUMNS, measure_attacks
from dpsnn.results import append_rows, write_table
from dpsnn.unlearnable.poisons import make_unlearnable

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def small_results(tmp_path_factory, tiny_runner):
    """Every suite on a tiny budget, two seeds (the attacks suite, the slowest, one): the tables a full run writes."""
    runner = tiny_runner(tmp_path_factory.mktemp("experiments"), attack_steps=2)
    runner.run([name for name in SUITES if name != "attacks"], seeds=2)
    runner.run(["attacks"], seeds=1)
    return runner.results_dir


@pytest.fixture(scope="module")
def small_unlearnable(tmp_path_factory):
    """A fake MNIST with a random-noise and an NTGA copy made by the real code, and train.csv rows for them."""
    root = tmp_path_factory.mktemp("unlearnable")
    data, results = root / "data", root / "results"
    write_mnist(data, fake_mnist())
    ntga = {"iterations": 1, "block_size": 100, "target_size": 50, "compile": False}
    for method, options in (("random", {}), ("ntga", ntga)):
        make_unlearnable("mnist", method, 0.3, options=options, root=data, system_dir=root, progress=False)
    rows = []
    for dataset, method, recipe, accuracy in [
        ("mnist", "clean", "plain", 0.9),
        ("mnist+random", "random", "plain", 0.88),
        ("mnist+ntga", "ntga", "plain", 0.4),
        ("mnist+ntga", "ntga", "jpeg(quality=10)", 0.7),
    ]:
        for seed in range(2):
            setting = {"dataset": dataset, "method": method, "epsilon": 0 if method == "clean" else 0.3}
            setting.update(architecture="reference", recipe=recipe, seed=seed, epochs=1, train_size=100)
            measured = {"test_acc": accuracy + 0.01 * seed, "test_acc_se": 0.02, "obeys_rules": True}
            rows.append({**setting, **measured})
    append_rows(results / "train.csv", rows)
    return {"DPSNN_UNLEARNABLE": str(results), "DPSNN_DATA": str(data)}


@pytest.fixture(scope="module")
def small_mico(tmp_path_factory):
    """A tiny MICO task on a fake MNIST (no defence and Laplace noise, 4 models each) built and measured for real."""
    root = tmp_path_factory.mktemp("mico")
    data, system, results = root / "data", root / "system", root / "results"
    system.mkdir()
    write_mnist(data, fake_mnist(train_count=400, test_count=20))
    settings = BuildSettings(
        dataset="mnist", architecture="mlp:64", epochs=2, len_training=100, len_challenge=20, batch_size=50, val_size=30
    )
    scenarios = scenarios_for("mnist", [math.inf], ["laplace:scale=0.5"])
    attacks = ["chance", "membership-threshold:signal=loss", "calibrated:mode=offline"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DPSNN_OFFLINE", "1")
        task = build_task(root / "mico", settings, scenarios, 4, data, system, download=False, progress=False).task
        dataset = built_dataset(task, data, system, download=False)
        rows = measure_attacks(task, dataset, attacks, n_bootstrap=20, progress=False)
    write_table(results / "mnist.csv", rows, list(MEASURE_COLUMNS))
    return {"DPSNN_MICO": str(results)}


def test_there_is_one_notebook_per_question():
    names = [path.stem for path in NOTEBOOKS]
    topics = ("data_volume", "nopeek", "laplacian_noise", "post_training_noise", "noise_with_nopeek", "shift")
    questions = (
        "dp_sgd",
        "dp_schedules",
        "suppress",
        "inversion_attacks",
        "membership_inference",
        "unlearnable",
        "mico",
    )
    for topic in (*topics, *questions):
        assert any(topic in name for name in names), f"no notebook about {topic}"


KERNEL_STARTS = 3


def execute_once(path: Path, folder: Path) -> tuple[Path, nbformat.NotebookNode]:
    """Run the notebook at ``path`` in a kernel of its own, its figures under ``folder``; the executed notebook."""
    notebook = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(folder)}}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()
    return folder, notebook


def execute(path: Path, folder: Path) -> tuple[Path, nbformat.NotebookNode]:
    """``execute_once``, with a kernel that dies before its first reply started again (up to ``KERNEL_STARTS``).

    Such a kernel has run none of the notebook: two kernels started at once can pick the same free port
    (jupyter_client chooses the ports before the kernel binds them), and the one that loses exits. Any other
    failure is the notebook's own and is raised at once.
    """
    for _ in range(KERNEL_STARTS - 1):
        try:
            return execute_once(path, folder)
        except RuntimeError as error:
            if "before replying to kernel_info" not in str(error):
                raise
            time.sleep(random.uniform(1, 3))
    return execute_once(path, folder)


@pytest.fixture(scope="module")
def executed(small_results, small_unlearnable, small_mico, tmp_path_factory):
    """Every notebook run top to bottom on the small results, two kernels at a time (each is a process of its own).

    The kernels inherit the environment, so the variables pointing them at the small results are set for
    the whole fixture; each notebook writes its figures into a folder of its own (DPSNN_FIGURES is relative).
    """
    settings = {"DPSNN_RESULTS": str(small_results), "DPSNN_FIGURES": "figures", **small_unlearnable, **small_mico}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        with ThreadPoolExecutor(2) as pool:
            jobs = {path.stem: pool.submit(execute, path, tmp_path_factory.mktemp(path.stem)) for path in NOTEBOOKS}
            return {name: job.result() if not job.exception() else job.exception() for name, job in jobs.items()}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, executed):
    outcome = executed[path.stem]
    if isinstance(outcome, BaseException):
        raise outcome
    folder, notebook = outcome
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    assert list((folder / "figures").glob("*.png"))
