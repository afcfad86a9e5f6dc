"""Imports point down (DESIGN.md): the pure modules load without Lightning, and importing dpsnn changes no
process-wide setting (warnings, loggers, threads, matplotlib's backend).

Each check runs in a fresh interpreter, so what other tests imported does not hide a problem. One
interpreter serves each group of checks to keep the suite fast: the Lightning-free imports are each judged
in a forked child of an interpreter that has loaded only torch, numpy and torchmetrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The modules that must load without Lightning (and without the training code).
PURE_MODULES = (
    "dpsnn.stats",
    "dpsnn.metrics",
    "dpsnn.defences",
    "dpsnn.defences.base",
    "dpsnn.attacks.base",
    "dpsnn.architectures",
    "dpsnn.inference",
    # every attack spec: the registry is read without Lightning (the fitted decoder lives apart)
    "dpsnn.attacks.inversion",
    "dpsnn.attacks.best_of",
    "dpsnn.attacks.membership",
    "dpsnn.attacks.lira",
    "dpsnn.attacks.whitebox",
    # what the analysis notebooks import: reading results never loads the trainers
    "dpsnn.experiments.store",
    "dpsnn.experiments.summary",
    "dpsnn.experiments.report",
    # MICO's official models: the SST-2 path imports transformers (an optional extra) only when used
    "dpsnn.mico.official",
)
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
OPTIONAL = ("transformers",)  # an optional extra's package, imported where it is used
TRAINING_CODE = ("dpsnn.models", "dpsnn.training", "dpsnn.loops")

PURE_SCRIPT = """
import importlib, json, os, sys

# Heavy dependencies that do not import Lightning, loaded once and shared by every forked child.
import numpy, torch, torchmetrics

FORBIDDEN = {forbidden!r}
preloaded = sorted(name for name in FORBIDDEN if name in sys.modules)
results = {{}}


def judge(statement):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            exec(statement, {{}})
            found = sorted(name for name in FORBIDDEN if name in sys.modules)
            message = {{"found": found}}
        except BaseException as error:
            message = {{"error": f"{{type(error).__name__}}: {{error}}"}}
        os.write(write, json.dumps(message).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{{"error": "the child died"}}')


for module in {modules!r}:
    results[module] = judge(f"import {{module}}")
results["registered_defences()"] = judge("import dpsnn.defences; dpsnn.defences.registered_defences()")
print(json.dumps({{"preloaded": preloaded, "results": results}}))
"""

SETTINGS_SCRIPT = """
import ast, importlib, json, logging, pathlib, pkgutil, sys, warnings

# Everything dpsnn imports from other packages is loaded first (Lightning included): what those
# packages set up when imported is theirs, and the comparison below is of what dpsnn adds.
package = pathlib.Path({package!r})
dependencies = set()
for path in package.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            dependencies.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            dependencies.add(node.module)
third_party = sorted(
    name for name in dependencies
    if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "dpsnn"
)
for name in ["lightning", *third_party]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # an optional dependency (or an attribute imported with 'from'): dpsnn cannot import it either

import matplotlib
import torch


def loggers():
    state = {{"<root>": [logging.root.level, len(logging.root.handlers), logging.root.manager.disable]}}
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            state[name] = [logger.level, len(logger.handlers), logger.disabled, logger.propagate]
    return state


def snapshot():
    return {{
        "warnings": [[a, getattr(m, "pattern", m), c.__name__, getattr(mod, "pattern", mod), n]
                     for a, m, c, mod, n in warnings.filters],
        "loggers": loggers(),
        "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
        "default_dtype": str(torch.get_default_dtype()),
        "backend": [matplotlib.rcParams["backend"], matplotlib.get_backend()],
    }}


before = snapshot()
import dpsnn
imported = ["dpsnn"]
for info in pkgutil.walk_packages(dpsnn.__path__, "dpsnn."):
    importlib.import_module(info.name)
    imported.append(info.name)
print(json.dumps({{"imported": imported, "before": before, "after": snapshot()}}))
"""


def start_python(script: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``script`` in a fresh interpreter from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def result_of(process: subprocess.Popen) -> dict:
    """The last line ``process`` printed, as JSON; its stderr when it failed."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreters() -> dict[str, dict]:
    """Both fresh interpreters, run side by side: the Lightning-free imports, and the process-wide settings."""
    pure = start_python(
        PURE_SCRIPT.format(forbidden=[*LIGHTNING, *TRAINING_CODE, *OPTIONAL], modules=list(PURE_MODULES))
    )
    # A backend other than matplotlib's headless default, so that a switch to Agg is seen.
    settings = start_python(SETTINGS_SCRIPT.format(package=str(REPO / "dpsnn")), env={"MPLBACKEND": "svg"})
    try:
        return {"pure": result_of(pure), "settings": result_of(settings)}
    finally:
        for process in (pure, settings):
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module")
def pure_imports(interpreters) -> dict:
    return interpreters["pure"]


@pytest.fixture(scope="module")
def settings(interpreters) -> dict:
    return interpreters["settings"]


@pytest.mark.parametrize("statement", [*PURE_MODULES, "registered_defences()"])
def test_pure_modules_import_no_lightning_and_no_training_code(pure_imports, statement):
    assert pure_imports["preloaded"] == [], "torch, numpy or torchmetrics already loads these; nothing can be judged"
    result = pure_imports["results"][statement]
    assert "error" not in result, result.get("error")
    assert result["found"] == [], f"{statement} loads {', '.join(result['found'])}"


def test_every_module_of_the_package_is_imported(settings):
    modules = {
        path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".") for path in (REPO / "dpsnn").rglob("*.py")
    }
    modules = {name.removesuffix(".__init__") for name in modules}
    assert modules <= set(settings["imported"])
    assert {"dpsnn.training", "dpsnn.plots", "dpsnn.experiments.runner"} <= modules


def test_importing_dpsnn_adds_no_warning_filter(settings):
    assert settings["after"]["warnings"] == settings["before"]["warnings"]


def test_importing_dpsnn_changes_no_logger(settings):
    before, after = settings["before"]["loggers"], settings["after"]["loggers"]
    changed = {name: (before[name], after[name]) for name in before if after.get(name) != before[name]}
    assert changed == {}
    # A logger dpsnn brings into being is left as the logging module makes it: no level, no handler.
    for name in sorted(set(after) - set(before)):
        assert after[name][:2] == [0, 0], f"logger {name!r} was configured at import: {after[name]}"
    assert any(name.startswith("lightning") for name in before), "Lightning's own loggers should be in the baseline"


def test_importing_dpsnn_changes_no_torch_setting(settings):
    assert settings["after"]["threads"] == settings["before"]["threads"]
    assert settings["after"]["default_dtype"] == settings["before"]["default_dtype"]


def test_importing_dpsnn_leaves_matplotlib_backend_alone(settings):
    assert settings["before"]["backend"][1].lower() == "svg"
    assert settings["after"]["backend"] == settings["before"]["backend"]


def test_every_public_name_resolves():
    import dpsnn
    import dpsnn.attacks

    for package in (dpsnn, dpsnn.attacks):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018
