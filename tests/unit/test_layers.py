"""The layering of docs/architecture.md, checked on the source with ast: which folders may import what, and who
may print.

A unit is a folder under snpvirt/ (`attest`, `cli`, ...) or a module at its top (`manager.py`). Every unit has
a layer; the capability folders are ranked bottom-up, and a capability imports only those below it.
"""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "snpvirt"
MODULES = sorted(PACKAGE.rglob("*.py"))

VOCABULARY = {"errors.py", "models.py", "policy.py", "fileio.py", "__init__.py"}  # __init__: only __version__
CAPABILITIES = ("attest", "launch", "domain", "host", "image")  # bottom-up; image/ arrives with guest images
BOUNDARY = {"libvirt"}
ORCHESTRATION = {"manager.py", "orchestration", "fleet"}  # orchestration/: Manager's parts; fleet/ arrives with the fleet work
ENTRY = {"api.py"}  # the library entry point: the CLI's wiring (connection, gate, manager) for other front ends
PRESENTATION = {"output.py", "cli", "__main__.py"}

# third-party package -> the units (folder, or folder/module) that may import it
ALLOWED = {
    "libvirt": {"libvirt"},
    "jinja2": {"domain/render.py"},
    "markupsafe": {"domain/render.py"},
    "typer": {"cli"},
}


def relative(path):
    return path.relative_to(PACKAGE).as_posix()


def unit(relative_path):
    """`domain/render.py` -> `domain`; `manager.py` -> `manager.py`."""
    return relative_path.split("/")[0]


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from snpvirt import fileio` imports the module snpvirt.fileio
                submodule = f"{node.module}.{alias.name}"
                yield submodule if _is_module(submodule) else node.module


def _is_module(dotted):
    parts = dotted.split(".")
    if parts[0] != "snpvirt":
        return False
    where = PACKAGE.joinpath(*parts[1:])
    return where.is_dir() or where.with_suffix(".py").is_file()


def snpvirt_units(path):
    """The other units of snpvirt that the module at path imports."""
    found = set()
    for name in imports(path):
        parts = name.split(".")
        if parts[0] != "snpvirt":
            continue
        if len(parts) == 1:
            target = "__init__.py"  # from snpvirt import __version__
        else:
            target = parts[1] if (PACKAGE / parts[1]).is_dir() else parts[1] + ".py"
        found.add(target)
    return found - {unit(relative(path))}


def unit_graph():
    graph = {}
    for path in MODULES:
        graph.setdefault(unit(relative(path)), set()).update(snpvirt_units(path))
    return graph


def layer(name):
    for layer_name, members in (("vocabulary", VOCABULARY), ("capability", set(CAPABILITIES)),
                                ("boundary", BOUNDARY), ("orchestration", ORCHESTRATION), ("entry point", ENTRY),
                                ("presentation", PRESENTATION)):
        if name in members:
            return layer_name
    return None


def modules_in(*units):
    return [p for p in MODULES if unit(relative(p)) in units]


def test_every_unit_has_a_layer():
    """A new folder or top-level module says where it sits (here and in docs/architecture.md)."""
    assert not [name for name in unit_graph() if layer(name) is None]


def test_imports_are_absolute():
    """The checks below read absolute names; the project writes no relative imports."""
    relative_imports = [relative(p) for p in MODULES for n in ast.walk(ast.parse(p.read_text()))
                        if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative_imports


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_third_party_imports_stay_in_their_layer(path):
    for name in imports(path):
        top = name.split(".")[0]
        if top in ALLOWED:
            assert {unit(relative(path)), relative(path)} & ALLOWED[top], f"{relative(path)} imports {top}"


def test_the_folder_graph_has_no_cycle():
    graphlib.TopologicalSorter(unit_graph()).prepare()  # raises CycleError naming the loop


@pytest.mark.parametrize("path", modules_in(*VOCABULARY), ids=relative)
def test_vocabulary_imports_only_vocabulary(path):
    assert snpvirt_units(path) <= VOCABULARY


@pytest.mark.parametrize("path", modules_in("errors.py", "models.py"), ids=relative)
def test_errors_and_models_import_nothing_of_snpvirt(path):
    assert not [n for n in imports(path) if n.startswith("snpvirt")]


def test_fileio_stays_at_the_vocabulary_level():
    """Every layer reads and writes files through fileio, so it may lean on nothing but the errors."""
    assert {n for n in imports(PACKAGE / "fileio.py") if n.startswith("snpvirt")} == {"snpvirt.errors"}


@pytest.mark.parametrize("path", modules_in(*CAPABILITIES), ids=relative)
def test_capabilities_import_only_the_vocabulary_and_the_capabilities_below(path):
    """attest/ <- launch/ <- domain/ <- host/: never the libvirt boundary, the manager, the fleet, output or cli."""
    own = CAPABILITIES.index(unit(relative(path)))
    below = set(CAPABILITIES[:own])
    upward = snpvirt_units(path) - VOCABULARY - below
    assert not upward, f"{relative(path)} imports {sorted(upward)}"


@pytest.mark.parametrize("path", modules_in(*BOUNDARY), ids=relative)
def test_the_libvirt_boundary_imports_only_the_vocabulary(path):
    assert snpvirt_units(path) <= VOCABULARY


@pytest.mark.parametrize("path", modules_in(*ORCHESTRATION), ids=relative)
def test_orchestration_takes_the_hypervisor_as_an_object(path):
    """The manager works on a Hypervisor protocol: it imports capabilities, never libvirt/, output or cli."""
    assert snpvirt_units(path) <= VOCABULARY | set(CAPABILITIES) | ORCHESTRATION


@pytest.mark.parametrize("path", [p for p in MODULES if unit(relative(p)) not in ("cli", "output.py")], ids=relative)
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


@pytest.mark.parametrize("path", modules_in(*ENTRY), ids=relative)
def test_the_entry_point_is_below_the_presentation(path):
    """Front ends other than the CLI (the Ansible module) call snpvirt.api: it must not pull in the CLI or its output."""
    assert not snpvirt_units(path) & PRESENTATION, f"{relative(path)} imports {sorted(snpvirt_units(path) & PRESENTATION)}"
