"""The layout rules of docs/architecture.md, checked by reading the code (no module is imported):
which package may import which, routers that stay thin, and files and functions of a readable size.
The fresh-interpreter check that the service loads no torch is tests/model/test_torch_free.py."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "model.bundle"
TRAINING_ONLY = ("torch", "torchvision", "onnx", "onnxscript", "safetensors", "webdataset", "matplotlib")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
# Where a size limit is passed on purpose: one line of why each.
LONGER = {
    "model/clip.py": "the whole model in one readable file, as openai/CLIP's clip/model.py",
}


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def imports(path: Path) -> Iterator[tuple[str, ast.AST, str | None]]:
    """(module imported, the node, the function it is imported in or None) for every import."""
    tree = ast.parse(path.read_text())

    def walk(node: ast.AST, func: str | None) -> Iterator[tuple[str, ast.AST, str | None]]:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child, func
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                yield child.module, child, func
            yield from walk(child, inner)

    yield from walk(tree, None)


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def outside_the_core(name: str) -> bool:
    """A module neither the core nor the service may import: the training code, or torch and kin."""
    return (under(name, "model") and not under(name, CORE)) or any(under(name, t) for t in TRAINING_ONLY)


def offending(package: str, bad: Callable[[str], bool]) -> list[str]:
    return [
        f"{mod} imports {name}" for mod, path in modules(package) for name, _, _ in imports(path) if bad(name)
    ]


def test_the_core_imports_neither_torch_nor_training_code_nor_the_app() -> None:
    bad = offending("model/bundle", lambda name: under(name, "app") or outside_the_core(name))
    assert not bad, bad


def test_the_app_imports_only_the_core_of_model() -> None:
    bad = offending("app", outside_the_core)
    assert not bad, bad


def test_model_imports_the_app_only_where_the_cli_serves_it() -> None:
    bad = [
        f"{mod} imports {name} (in {func or 'the module'})"
        for mod, path in modules("model")
        for name, _, func in imports(path)
        if under(name, "app") and (mod, func) != ("model.cli", "cmd_serve")
    ]
    assert not bad, bad


def test_the_client_is_standalone_on_httpx_and_the_standard_library() -> None:
    """zeroshot_client is installed where the service is not: nothing of app or model, and no
    third-party package but httpx (Pillow only for annotations: a PIL image is recognised without it)."""
    bad = []
    for mod, path in modules("zeroshot_client"):
        annotations_only = type_checking_lines(path)
        for name, node, _ in imports(path):
            top = name.split(".")[0]
            typing_pil = top == "PIL" and getattr(node, "lineno", 0) in annotations_only
            if top not in sys.stdlib_module_names | {"httpx", "zeroshot_client"} and not typing_pil:
                bad.append(f"{mod} imports {name}")
    assert not bad, bad


def type_checking_lines(path: Path) -> set[int]:
    """The lines inside `if TYPE_CHECKING:` blocks, whose imports never run."""
    return {
        line
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
        for line in range(n.lineno, (n.end_lineno or n.lineno) + 1)
    }


def routers() -> set[str]:
    return {
        mod
        for mod, path in modules("app/api")
        if any(
            isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "router" for t in n.targets)
            for n in ast.parse(path.read_text()).body
        )
    }


def test_routers_call_the_engine_and_import_no_other_router() -> None:
    found = routers()
    assert {"app.api.classify", "app.api.embeddings", "app.api.label_sets"} <= found
    bad = []
    for mod, path in modules("app/api"):
        if mod not in found:
            continue
        for name, _, _ in imports(path):
            if name in found and name != mod:
                bad.append(f"router {mod} imports router {name}")
            if under(name, "app.runtime") and name != "app.runtime.engine":
                bad.append(f"router {mod} reaches into {name}: routes call the engine")
    assert not bad, bad


def sizes() -> Iterator[tuple[str, str, int, int]]:
    """(file, what, lines, limit) for every file and function in app/, model/ and zeroshot_client/."""
    for package in ("app", "model", "zeroshot_client"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel, text = str(path.relative_to(ROOT)), path.read_text()
            yield rel, "file", len(text.splitlines()), MAX_FILE_LINES
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    yield rel, f"{node.name}()", lines, MAX_FUNCTION_LINES


def test_files_and_functions_are_short_enough_to_read_in_one_sitting() -> None:
    over = [
        f"{rel} {what}: {n} lines (at most {limit})"
        for rel, what, n, limit in sizes()
        if n > limit and rel not in LONGER and f"{rel}:{what}" not in LONGER
    ]
    assert not over, over


@pytest.mark.parametrize("place", sorted(LONGER))
def test_every_exception_to_the_size_limits_is_still_needed(place: str) -> None:
    assert any(n > limit for rel, what, n, limit in sizes() if place in (rel, f"{rel}:{what}")), (
        f"{place} is within the limits now: take it out of LONGER"
    )
