"""pytest plugin for scripts/mutation: re-import the module under mutation, so import-time code mutates too.

mutmut swaps a function for its mutant when the function is called. Functions called once, at
import, to build a table (snp_rules._blob, host._cpu_feature, host._kvm_param make the checks in
RULES and CHECKS) run in mutmut's parent process before any mutant is active: without a re-import
their mutants could never be killed, and mutmut would credit their import-time call to whichever
test ran first. So:
- in mutmut's stats run (which tests reach which function), the module is re-imported before each
  test, and every test is credited with the table-building calls;
- in a mutant's run, it is re-imported once, before the first test, with the mutant active.
The clean run (no mutant) re-imports too, so a module that cannot take it fails there, not as
false kills. mutmut's copy of a module holds every mutant (attest/verify.py: 38,000 lines, 1.2 s to
compile, and no .pyc is written), so the code is compiled once, in mutmut's parent process, and
each re-import only runs it (~20 ms); the forked workers inherit the compiled code.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import CodeType, ModuleType

import pytest

MODULE = os.environ.get("SNPVIRT_MUTATION_MODULE", "")
_reloaded = False
_code: CodeType | None = None


def _reimport(module: ModuleType) -> None:
    """importlib.reload without compiling again: run the module's code in its own namespace."""
    global _code
    if _code is None:
        origin = module.__spec__.origin
        with open(origin, "rb") as source:
            _code = compile(source.read(), origin, "exec")
    exec(_code, module.__dict__)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _reloaded
    _reloaded = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _reloaded
    if not MODULE or (_reloaded and os.environ.get("MUTANT_UNDER_TEST") != "stats"):
        return
    if MODULE in sys.modules:
        _reimport(sys.modules[MODULE])
    else:
        importlib.import_module(MODULE)
    _reloaded = True
