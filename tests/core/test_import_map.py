"""The map and the house cannot drift: each package's ``__init__`` says what it may import ("Imports: ..."), and
the imports of its modules, read with ast (those inside functions too), are exactly that."""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = sorted(p.name for p in (REPO / "isc").iterdir() if (p / "__init__.py").is_file())
STAGES = {"download", "extract", "search", "verify", "evaluate", "submit", "synth", "models", "train", "core"}


def declared(package: str, root: Path = REPO) -> tuple[set[str], bool]:
    """(the ``isc`` modules named in the package's "Imports:" paragraph, whether it says "every stage")."""
    doc = ast.get_docstring(ast.parse((root / "isc" / package / "__init__.py").read_text())) or ""
    paragraph = next((p for p in doc.split("\n\n") if p.startswith("Imports:")), None)
    assert paragraph is not None, f"isc/{package}/__init__.py says nothing of what it imports"
    return set(re.findall(r":mod:`(isc(?:\.\w+)+)`", paragraph)), "every stage" in paragraph


def imported(package: str, root: Path = REPO) -> dict[str, str]:
    """Every module of another ``isc`` package that the package's modules import, with the first importer."""
    found: dict[str, str] = {}
    for path in sorted((root / "isc" / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{path}: a relative import"
                # ``from isc.download import s3`` imports the module isc.download.s3
                names = [f"{node.module}.{a.name}" if (root / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(
                    ".py").is_file() else node.module for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "isc" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(name, str(path.relative_to(root)))
    return found


def covers(entry: str, module: str) -> bool:
    return module == entry or module.startswith(entry + ".")


def map_differences(package: str, root: Path = REPO) -> tuple[dict[str, str], set[str]]:
    """(imports the package's ``__init__`` does not list, with their importer; listed imports no module makes)."""
    allowed, every_stage = declared(package, root)
    imports = imported(package, root)
    stages = {f"isc.{stage}" for stage in STAGES} if every_stage else set()
    undeclared = {m: where for m, where in imports.items() if not any(covers(e, m) for e in allowed | stages)}
    unused = {e for e in allowed if not any(covers(e, m) for m in imports)}
    return undeclared, unused


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_what_its_init_says(package: str) -> None:
    undeclared, unused = map_differences(package)
    assert not undeclared, f"isc/{package}/__init__.py does not list these imports: {undeclared}"
    assert not unused, f"isc/{package}/__init__.py lists imports that no module makes: {sorted(unused)}"


def test_nothing_imports_upwards_into_the_commands_or_the_pipeline() -> None:
    for package in PACKAGES:
        for module, where in imported(package).items():
            assert not covers("isc.cli", module), f"{where} imports the commands ({module})"
            assert package == "cli" or not covers("isc.pipeline", module), f"{where} imports {module}"


def test_a_map_that_the_code_contradicts_is_found(tmp_path: Path) -> None:
    """synth as it was: a helper imported from extract (inside a function too), a module named but unused."""
    package = tmp_path / "isc" / "synth"
    package.mkdir(parents=True)
    (tmp_path / "isc" / "download").mkdir()
    (tmp_path / "isc" / "download" / "s3.py").write_text("")
    (package / "__init__.py").write_text('"""Synthetic data.\n\nImports: :mod:`isc.core`, :mod:`isc.search`."""\n')
    (package / "draw.py").write_text("from isc.core.files import InputError\nfrom isc.download import s3\n\n\n"
                                     "def f():\n    from isc.extract.decode import on_white\n")
    undeclared, unused = map_differences("synth", tmp_path)
    assert undeclared == {"isc.download.s3": "isc/synth/draw.py", "isc.extract.decode": "isc/synth/draw.py"}
    assert unused == {"isc.search"}
