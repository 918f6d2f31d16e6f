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


def module_name(file: Path, root: Path = REPO) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO, packages=("embeddings", "pipelines", "tagger")) -> dict[str, set[str]]:
    """module -> the project's modules it imports, at any depth of the file (an import inside a function counts:
    a circle hidden in a function is still a circle). `from a import b` counts as importing a.b when b is a module."""
    files = {module_name(f, root): f for p in packages for f in sorted((root / p).rglob("*.py"))}
    graph = {}
    for name, file in files.items():
        found = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in files:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                found |= subs or {node.module}
                if len(subs) < len(node.names):
                    found.add(node.module)  # names defined in the module itself
        graph[name] = found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once (as the path around it from its first module)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle_anywhere_in_the_project():
    """bundle <-> model and backbones <-> onnx_backbone <-> features once imported each other (inside functions)."""
    assert cycles(import_graph()) == []


def test_the_circle_check_sees_a_circle_inside_a_function(tmp_path):
    pkg = tmp_path / "tagger"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tagger.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from tagger import a\n")
    (pkg / "c.py").write_text("import tagger.a\n")
    graph = import_graph(tmp_path, packages=("tagger",))
    assert graph["tagger.c"] == {"tagger.a"} and graph["tagger.b"] == {"tagger.a"}
    assert cycles(graph) == [["tagger.a", "tagger.b", "tagger.a"]]
