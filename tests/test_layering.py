"""The dependency direction of docs/ARCHITECTURE.md, checked on every import statement of each layer
(module level and inside functions, where the lazy imports are): the UI only calls services;
`models/` never imports gradio, sqlalchemy or emoweb; `storage/` never imports torch, gradio or emoweb."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# layer (a package folder) -> top-level names or dotted prefixes its modules must not import
FORBIDDEN = {
    "emoweb/ui": ("emoweb.learning", "emoweb.pipeline", "emoweb.cli", "models", "storage", "torch", "sqlalchemy",
                  "transformers"),
    "models": ("gradio", "sqlalchemy", "emoweb", "storage"),
    "storage": ("torch", "gradio", "emoweb", "models"),
}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `path`, a module of `package`
    (relative imports resolved against it); `from a import b` gives a, a.b (b may be a submodule)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _breaks(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def layer_violations(layer: str) -> list[str]:
    """'file:line imports module' for each import of `layer` (a folder under the repository) that its
    rule forbids."""
    out = []
    for path in sorted((REPO / layer).rglob("*.py")):
        package = ".".join(path.relative_to(REPO).parent.parts)
        for line, module in imported_modules(path, package):
            if _breaks(module, FORBIDDEN[layer]):
                out.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_the_architecture_allows(layer: str) -> None:
    assert layer_violations(layer) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative import are both seen."""
    module = tmp_path / "tab.py"
    module.write_text("import gradio as gr\n\ndef f():\n    from emoweb.learning.metrics import comparison_table\n"
                      "    from ..pipeline import media\n    import torch.nn\n", encoding="utf-8")
    found = [m for _, m in imported_modules(module, "emoweb.ui") if _breaks(m, FORBIDDEN["emoweb/ui"])]
    assert found == ["emoweb.learning.metrics", "emoweb.learning.metrics.comparison_table", "emoweb.pipeline",
                     "emoweb.pipeline.media", "torch.nn"]


def test_storage_never_imports_torch_or_gradio() -> None:
    """At run time too: importing storage loads neither torch, gradio nor emoweb."""
    code = "import sys, storage, storage.repo; assert not {'torch', 'gradio', 'emoweb'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
