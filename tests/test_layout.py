"""The one-way import rule: embeddings <- pipelines <- tagger, checked on the source itself."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"embeddings": {"pipelines", "tagger", "torch", "torchvision"}, "pipelines": {"tagger"}}


def imported_packages(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(REPO)): sorted(imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert {f: b for f, b in bad.items() if b} == {}


def test_checker_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import tagger.cli\nfrom pipelines.datasets import x\nfrom . import y\n")
    assert imported_packages(f) == {"tagger", "pipelines"}


def _declared() -> set[str]:
    """Distribution names pyproject.toml asks for: dependencies and every extra."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_every_third_party_import_is_declared():
    """A package the code imports but pyproject.toml does not ask for works here by luck (scipy once did)."""
    import sys
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    own = {"embeddings", "pipelines", "tagger"}
    undeclared = {}
    for package in sorted(own):
        for f in sorted((REPO / package).rglob("*.py")):
            for name in imported_packages(f) - own - set(sys.stdlib_module_names):
                found = {d.lower().replace("_", "-") for d in dists.get(name, [])}
                if not found & _declared():
                    undeclared.setdefault(name, str(f.relative_to(REPO)))
    assert undeclared == {}
