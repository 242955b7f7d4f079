"""pytest plugin for scripts/mutation: re-import the module under mutation, so import-time code mutates too;
and keep each mutant's session short (fastest tests first, no shrinking, no inherited garbage to collect).

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

import gc
import importlib
import json
import os
import sys
import tempfile
from types import CodeType, ModuleType

import pytest

MODULE = os.environ.get("SNPVIRT_MUTATION_MODULE", "")
# Runs of mutmut that are not a mutant's: the clean run, the stats run, listing the tests.
_NOT_A_MUTANT = ("", "stats", "fail", "list_all_tests", "mutant_generation")
_durations: dict[str, float] | None = None
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



@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """In a mutant's run (a child forked from mutmut's process, which ran every test once), freeze what the
    child inherited: the garbage collector then never walks those objects, and walking them wrote to every
    page of the parent's heap (a copy of each, per mutant). Measured: a mutant's session 2-3x faster."""
    if os.environ.get("MUTANT_UNDER_TEST", "") not in _NOT_A_MUTANT:
        gc.freeze()
        _no_shrinking()
        # A fresh tmp_path root per mutant: pytest's numbered roots (pytest-N) would each be cleaned up at
        # the end of every mutant's session (an rmtree of an older mutant's files, 7 % of a host check's
        # run). scripts/mutation puts TMPDIR on /dev/shm and removes it after the module.
        if config.option.basetemp is None:
            config.option.basetemp = os.path.join(tempfile.gettempdir(), f"snpvirt-mutant-{os.getpid()}")


def _no_shrinking() -> None:
    """A property test that fails on a mutant has killed it: Hypothesis need not shrink the example it
    found (shrinking took most of a mutant's run where a property test killed it, seconds each time)."""
    try:
        from hypothesis import Phase, settings
    except ImportError:
        return
    settings.register_profile("snpvirt-mutation", parent=settings.get_profile(settings._current_profile or "default"),
                              phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
    settings.load_profile("snpvirt-mutation")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a mutant's run, the fastest tests first. mutmut runs them with -x, in no particular order: a
    mutant that a quick unit test kills would otherwise often wait for slow integration tests first."""
    if os.environ.get("MUTANT_UNDER_TEST", "") in _NOT_A_MUTANT:
        return
    durations = _test_durations()
    items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))


def _test_durations() -> dict[str, float]:
    """mutmut's record of each test's duration from its stats run (mutants/mutmut-stats.json)."""
    global _durations
    if _durations is None:
        _durations = {}
        for path in ("mutants/mutmut-stats.json", "mutmut-stats.json"):  # from mutmut's folder, or within mutants/
            try:
                with open(path, encoding="utf-8") as stats:
                    _durations = json.load(stats).get("duration_by_test", {})
                break
            except (OSError, ValueError):
                continue
    return _durations

