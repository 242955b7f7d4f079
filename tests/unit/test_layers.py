"""The layering of docs/architecture.md, checked on the source: which modules may import what, and who may print."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "snpvirt"
MODULES = sorted(PACKAGE.rglob("*.py"))

ALLOWED = {
    "libvirt": {"connection.py", "events.py"},
    "jinja2": {"render.py"},
    "markupsafe": {"render.py"},
    "typer": {"cli"},
}
VOCABULARY = {"errors.py", "models.py"}


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def owner(path):
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.name


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_third_party_imports_stay_in_their_layer(path):
    for name in imports(path):
        top = name.split(".")[0]
        if top in ALLOWED:
            assert owner(path) in ALLOWED[top], f"{path.name} imports {top}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.name in VOCABULARY], ids=lambda p: p.name)
def test_vocabulary_imports_nothing_of_snpvirt(path):
    assert not [n for n in imports(path) if n.startswith("snpvirt")]


@pytest.mark.parametrize("path", [p for p in MODULES if owner(p) not in ("cli", "output.py")],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_does_not_print(path):
    tree = ast.parse(path.read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "print" not in calls


def test_cli_startup_imports_nothing_heavy():
    import subprocess
    import sys
    code = ("import sys, snpvirt.cli.app; "
            "print(sorted(m for m in ('libvirt', 'lxml', 'jinja2', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_lazy_command_table_matches_the_commands():
    """Root --help lists commands from a table so it imports none of them: the table must not drift."""
    import importlib

    import typer

    from snpvirt.cli.app import COMMANDS, load_command
    for name, (module_name, attribute, _, listed_help) in COMMANDS.items():
        target = getattr(importlib.import_module(f"snpvirt.cli.{module_name}"), attribute)
        doc = target.registered_callback.callback.__doc__ if isinstance(target, typer.Typer) else target.__doc__
        assert " ".join(doc.split("\n\n")[0].split()) == listed_help, name
        assert load_command(name).name in (name, "")  # a sub-app group takes its name from the table


def test_fileio_stays_at_the_vocabulary_level():
    """Every layer reads and writes files through fileio, so it may lean on nothing but the errors."""
    assert {n for n in imports(PACKAGE / "fileio.py") if n.startswith("snpvirt")} == {"snpvirt.errors"}
