"""The benchmark's core reaches agents only by name: no module of ``clbench/`` imports the
``agents`` or ``baselines`` packages (checked in the source with ``ast``, so an import
inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import clbench

FORBIDDEN = ("agents", "baselines")


def imported_modules(path: Path) -> list[str]:
    """Every module named by an import statement in ``path`` (absolute imports)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_clbench_imports_no_agent():
    root = Path(clbench.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 10  # the walk found the package
    offending = [f"{path.relative_to(root.parent)}: {name}" for path in modules
                 for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN]
    assert not offending, "clbench/ imports an agent: " + "; ".join(offending)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from agents.tnen import TNEN\n    import baselines.si\n")
    assert imported_modules(source) == ["agents.tnen", "baselines.si"]
