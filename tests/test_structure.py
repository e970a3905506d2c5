"""The package's structure: every module documented, none too long, none left over.

The layers themselves (which module may import which) are import-linter's
contracts in pyproject.toml, checked by ``lint-imports`` in ``make lint``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cellseg"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
MAX_LINES = 800


def modules() -> list[Path]:
    """Every Python module of the package (shipped data excluded)."""
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if "data" not in path.relative_to(PACKAGE).parts[:-1] and "__pycache__" not in path.parts
    )


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def is_named(path: Path, text: str) -> bool:
    """Whether `text` names the module at `path`.

    A module is named by its path (``cellseg/io/readers.py``), its dotted name
    (``cellseg.io.readers``), or, inside a package that the text names
    (``cellseg/io/``), by its file name (``readers.py``). A package's
    ``__init__.py`` and its private modules (``_reader.py``) are named with
    their package.
    """
    if path == PACKAGE / "__init__.py":
        return True
    relative = rel(path)
    dotted = relative.removesuffix(".py").replace("/", ".")
    if relative in text or re.search(rf"`{re.escape(dotted)}`|\b{re.escape(dotted)}\b", text):
        return True
    if path.parent == PACKAGE:
        return False
    package = rel(path.parent)
    package_named = f"{package}/" in text or re.search(
        rf"\b{re.escape(package.replace('/', '.'))}\b", text
    )
    if not package_named:
        return False
    return path.name == "__init__.py" or path.name.startswith("_") or path.name in text


def layer_names() -> set[str]:
    """Top-level modules and packages named in the import-linter layers contract."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert layers["containers"] == ["cellseg"]
    names = set()
    for layer in layers["layers"]:
        names.update(name.strip(" ()") for name in re.split(r"[|:]", layer))
    return names


def test_every_module_is_in_the_architecture_doc():
    text = ARCHITECTURE.read_text()
    missing = [rel(path) for path in modules() if not is_named(path, text)]
    assert not missing, f"docs/ARCHITECTURE.md does not name these modules: {missing}"


def test_the_architecture_doc_names_no_module_that_does_not_exist():
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"\bcellseg/[A-Za-z0-9_/]+\.py\b", text))
    gone = sorted(path for path in named if not (REPO / path).is_file())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {gone}"


def test_no_module_passes_800_lines():
    long = {
        rel(path): n
        for path in modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_top_level_module_is_in_a_layer():
    """No module is left over from an old layout: each is a layer of the import contract."""
    allowed = layer_names()
    top = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py")
        or (path.is_dir() and (path / "__init__.py").is_file())
    }
    assert not top - allowed, f"modules of no layer (pyproject.toml): {sorted(top - allowed)}"
    both = sorted(
        path.name for path in PACKAGE.glob("*.py") if (PACKAGE / path.stem / "__init__.py").exists()
    )
    assert not both, f"modules beside a package of the same name: {both}"


def test_is_named():
    text = "`cellseg/io/` readers.py, `cellseg.tiling`, cellseg/cli.py, `cellseg/napari/`"
    assert is_named(PACKAGE / "io" / "readers.py", text)
    assert is_named(PACKAGE / "io" / "__init__.py", text)
    assert not is_named(PACKAGE / "io" / "scan.py", text)
    assert is_named(PACKAGE / "tiling.py", text)
    assert is_named(PACKAGE / "cli.py", text)
    assert is_named(PACKAGE / "napari" / "_widget.py", text)
    assert not is_named(PACKAGE / "napari" / "public.py", text)
    assert not is_named(PACKAGE / "measure.py", text)
