"""The package layout's rules, read from the code's imports (every import statement, at module level or inside a
function): the command line sits on top, nothing imports it back, no module reaches itself through imports, the store
imports nothing above it, the labeler only the store and the small shared layer, and only the command line and the
loop simulation import an algorithm. Each rule is also run on a small planted tree, so a broken checker fails too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("store", "labeler", "training")
ALGORITHMS = {f"training.algorithms.{name}" for name in ("sft", "reward", "dpo", "ppo", "rloo", "merge")}
LABELER_MAY_IMPORT = ("store", "labeler", "training.metrics", "training.loop.export")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    """Every Python module of the three packages, plus streamlit_app, by dotted name."""
    files = [p for package in PACKAGES for p in (root / package).rglob("*.py")]
    files += [root / "streamlit_app.py"] if (root / "streamlit_app.py").exists() else []
    return {module_name(root, p): p for p in files}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports; `from pkg import mod` counts as importing pkg.mod when that is a module."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` names a, a.b and a.b.c; keep the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each."""
    problems = [f"import cycle: {' -> '.join(group)}" for group in cycles(graph)]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if within(target, ["training.cli"]) and not within(module, ["training.cli"]):
                problems.append(f"{module} imports the command line ({target})")
            if module.startswith("store") and not within(target, ["store"]):
                problems.append(f"{module} (store) imports {target}")
            if within(module, ["labeler"]) and not within(target, LABELER_MAY_IMPORT):
                problems.append(f"{module} (labeler) imports {target}")
            if target in ALGORITHMS and not within(module, ["training.cli", "training.loop.loop_sim"]):
                problems.append(f"{module} imports the algorithm {target}")
    return problems


def test_the_project_keeps_its_import_rules():
    graph = import_graph(ROOT)
    assert "training.algorithms.dpo" in graph and "training.cli" in graph  # the checker sees the real tree
    assert "training.algorithms.dpo" in graph["training.cli.train_commands"]
    assert violations(graph) == []


def test_the_checker_finds_each_planted_violation(tmp_path):
    files = {
        "store/__init__.py": "from store import db\n",
        "store/db.py": "import training.loop.export\n",  # the store importing upwards
        "labeler/__init__.py": "",
        "labeler/page.py": "from training.engine import sampling\n",  # the labeler reaching into internals
        "training/__init__.py": "",
        "training/cli/__init__.py": "from training.algorithms import dpo\n",
        "training/algorithms/__init__.py": "",
        "training/algorithms/dpo.py": "def f():\n    from training.cli import main\n",  # a lazy import of the CLI
        "training/algorithms/ppo.py": "from training.algorithms.dpo import f\n",  # an algorithm importing another
        "training/engine/__init__.py": "",
        "training/engine/sampling.py": "from . import decode\n",  # a cycle through a relative import
        "training/engine/decode.py": "from training.engine.sampling import x\n",
        "training/loop/__init__.py": "",
        "training/loop/export.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = sorted(violations(import_graph(tmp_path)))
    assert problems == [
        "import cycle: training.algorithms.dpo -> training.cli",
        "import cycle: training.engine.decode -> training.engine.sampling",
        "labeler.page (labeler) imports training.engine.sampling",
        "store.db (store) imports training.loop.export",
        "training.algorithms.dpo imports the command line (training.cli)",
        "training.algorithms.ppo imports the algorithm training.algorithms.dpo",
    ]
