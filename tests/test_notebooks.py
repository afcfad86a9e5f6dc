"""Every analysis notebook runs top to bottom on a small results folder made by the runner."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dpsnn.experiments.suites import SUITES

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def small_results(tmp_path_factory, tiny_runner):
    """Every suite on a tiny budget, two seeds (the attacks suite, the slowest, one): the tables a full run writes."""
    runner = tiny_runner(tmp_path_factory.mktemp("experiments"), attack_steps=2)
    runner.run([name for name in SUITES if name != "attacks"], seeds=2)
    runner.run(["attacks"], seeds=1)
    return runner.results_dir


def test_there_is_one_notebook_per_question():
    names = [path.stem for path in NOTEBOOKS]
    topics = ("data_volume", "nopeek", "laplacian_noise", "post_training_noise", "noise_with_nopeek", "shift")
    for topic in (*topics, "dp_sgd", "dp_schedules", "suppress", "inversion_attacks", "membership_inference"):
        assert any(topic in name for name in names), f"no notebook about {topic}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, small_results, tmp_path, monkeypatch):
    monkeypatch.setenv("DPSNN_RESULTS", str(small_results))
    monkeypatch.setenv("DPSNN_FIGURES", str(tmp_path / "figures"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    assert list((tmp_path / "figures").glob("*.png"))
