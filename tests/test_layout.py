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
