"""The set-up files agree with each other and with the README."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    (pip_section,) = [d for d in environment["dependencies"] if isinstance(d, dict)]
    listed = {normalise(r) for r in pip_section["pip"] if not r.startswith("-e")}
    assert listed == declared


def test_constraints_pin_versions_inside_the_declared_ranges():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(text)
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_every_package_the_library_imports_is_a_declared_dependency():
    """A new seam entry (an Opacus defence, a scikit-learn attack) must add its package to pyproject.toml."""
    imported = set()
    for path in (REPO / "dpsnn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(name for name in imported if name not in sys.stdlib_module_names and name != "dpsnn")
    assert {"torch", "torchvision", "lightning"} <= set(third_party)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [text for name, extra in project["optional-dependencies"].items() if name != "dev" for text in extra]
    declared = {Requirement(text).name.lower() for text in [*project["dependencies"], *extras]}
    distributions = packages_distributions()
    for name in third_party:
        providers = {distribution.lower() for distribution in distributions.get(name, [name])}
        assert providers & declared, (
            f"dpsnn imports {name}, which no runtime dependency or extra in pyproject.toml provides"
        )
