"""Mutation testing for scripts/mutation (issue 10): do the tests fail when a safety decision breaks?

For each module in MODULES, mutmut makes small plausible bugs (a `<` for a `<=`, a dropped call, a
`not` removed, ...) one at a time and runs the tests against each. A mutant the tests fail on is
killed; one they pass on survived, and shows a decision no test pins down. Target: at least 85 %
of each module's mutants killed. Survivors judged equivalent (no test could tell them apart from
the real code) are listed with the reason in tests/mutation-equivalent.toml and count as killed.

Each module runs alone in build/mutation/<name>/ (a copy of the checkout plus mutmut's settings),
with only the tests named for it in MODULES; mutmut then runs, per mutant, only those of these tests
that reached the mutated function. Not part of CI: it takes minutes per module (see README).

    scripts/mutation                   every module in MODULES
    scripts/mutation certs image/verify  the named modules only (the stem, or the path under snpvirt/)
    scripts/mutation -j 1 host         one worker (the default is one per core)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.85
EQUIVALENT_FILE = ROOT / "tests" / "mutation-equivalent.toml"
WORK = ROOT / "build" / "mutation"
PLUGIN = Path(__file__).resolve().parent / "mutation_reload.py"

# module -> the tests that decide it. Keep daemon tests (the `libvirtd` fixture) out: each mutant
# runs in a fresh pytest session, which would start a daemon per mutant.
# The manager and the parts it composes (orchestration/) are decided by the same tests: the lifecycle,
# definitions changed outside snpvirt (the check before start), the readiness gate of every verb, the
# apply pipeline, the recorded measurement and the attestation expectations, all on the test driver.
MANAGER_TESTS = ["tests/integration/test_manager.py", "tests/integration/test_manager_drift.py",
                 "tests/integration/test_manager_define.py", "tests/integration/test_manager_verbs.py",
                 "tests/integration/test_import_measure.py",
                 "tests/integration/test_gate.py", "tests/integration/test_apply_pipeline.py",
                 "tests/integration/test_measurement_recorded.py", "tests/integration/test_attest_end_to_end.py",
                 "tests/unit/test_orchestration.py", "tests/unit/domain/test_copies.py"]
MODULES: dict[str, list[str]] = {
    **{module: MANAGER_TESTS for module in ["snpvirt/manager.py", *(f"snpvirt/orchestration/{part}.py" for part in
                                                                  ("base", "guards", "apply", "define", "verbs", "reading"))]},
    # The gate (gate_report, check_captured_host) is decided by the gate's own tests on the test driver.
    "snpvirt/host/readiness.py": ["tests/unit/host/test_host_check.py", "tests/integration/test_manager.py",
                                  "tests/integration/test_gate.py"],
    "snpvirt/host/checks.py": ["tests/unit/host/test_host_check.py"],
    "snpvirt/domain/rules.py": ["tests/unit/domain/test_snp_rules.py", "tests/unit/domain/test_explain_import.py"],
    "snpvirt/attest/verify.py": ["tests/unit/attest/test_attest.py", "tests/integration/test_attest_end_to_end.py"],
    "snpvirt/attest/certs.py": ["tests/unit/attest/test_attest.py", "tests/unit/attest/test_kds.py"],
    "snpvirt/attest/kds.py": ["tests/unit/attest/test_kds.py"],
    "snpvirt/domain/importer.py": ["tests/unit/domain/test_explain_import.py", "tests/integration/test_manager.py"],
    "snpvirt/domain/metadata.py": ["tests/unit/domain/test_metadata.py", "tests/unit/domain/test_explain_import.py",
                                   "tests/integration/test_manager.py", "tests/integration/test_measurement_recorded.py"],
    # The recorded measurement: launch inputs checked against the domain (vCPUs, model, cmdline, kernel hashes,
    # launch-file digests) and what a report must show (attestation_expectations), through the manager.
    "snpvirt/domain/launchrecord.py": ["tests/unit/domain/test_launchrecord.py",
                                       "tests/integration/test_measurement_recorded.py",
                                       "tests/integration/test_import_measure.py",
                                       "tests/integration/test_attest_end_to_end.py"],
    "snpvirt/fileio.py": ["tests/unit/test_fileio.py", "tests/unit/test_output_files.py", "tests/unit/test_bounded_inputs.py"],
    # The request deadline and the http(s)-only redirect check that KDS and image downloads share: its own
    # tests, against a loopback server (test_kds and test_fetch reach it too, but took 20 min for 79 mutants).
    "snpvirt/netio.py": ["tests/unit/test_netio.py"],
    # Pure: the fleet tests that reach place() in-process are its own (the fleet CLI tests run daemons).
    "snpvirt/fleet/placement.py": ["tests/unit/fleet/test_placement.py"],
    # imagepool (its only caller) is tested through daemons (test_image_pull): real gpgv, in-process, here.
    "snpvirt/image/verify.py": ["tests/unit/image/test_verify.py"],
    # A fleet's copies: filled in from a shape, whose one check stands in for each copy's (apply._shape_asked_snp).
    "snpvirt/domain/copies.py": ["tests/unit/domain/test_copies.py", "tests/integration/test_manager.py"],
}

# What a mutant's tests did -> whether it counts as killed. A timeout is a kill: the tests noticed.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
COPIED = ["snpvirt", "tests", "templates", "examples", "pyproject.toml", "README.md"]


@dataclass
class Mutant:
    name: str  # mutmut's: snpvirt.attest.verify.x_verify__mutmut_12, snpvirt.attest.certs.xǁCertǁrole__mutmut_3
    status: str
    before: str = ""  # the original line(s), stripped
    after: str = ""  # the mutated line(s), stripped
    line: int = 0
    equivalent: str = ""  # the reason, when tests/mutation-equivalent.toml lists it

    @property
    def function(self) -> str:
        mangled = self.name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
        if mangled.startswith("xǁ"):
            return ".".join(mangled[2:].split("ǁ"))  # Class.method
        return mangled[2:]  # x_name -> name


@dataclass
class ModuleResult:
    path: str
    mutants: list[Mutant] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def killed(self) -> int:
        return sum(1 for m in self.mutants if m.status in KILLED or m.equivalent)

    @property
    def score(self) -> float:
        return self.killed / len(self.mutants) if self.mutants else 1.0


def die(message: str, hint: str, code: int = 2) -> None:
    print(f"mutation: error: {message}", file=sys.stderr)
    print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)


def mutmut_config(module: str, tests: list[str]) -> str:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"
    return "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["snpvirt"]',
        f"only_mutate = {toml_list([module])}",
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}",
        # No cache files in the copy; the plugin re-imports the module under mutation per test.
        # Never the daemon tests (a libvirtd per mutant): a file named in MODULES may hold one or two. Nor the
        # tests that need libvirt's event loop: mutmut forks each mutant's run from a process that ran the
        # loop, and libvirt's GLib loop stays the parent's thread's, so a child gets no event (each such test
        # failed after its deadline, a kill that said nothing about the mutant).
        # A mutant that makes a test wait for ever (a semaphore never released) fails at 30 s, not at the
        # suite's 120: no test of a module in MODULES takes more than a few seconds.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "mutation_reload", "-m", "not daemon and not event_loop",'
        ' "--timeout", "30"]',
        'also_copy = ["templates", "examples", "mutation_reload.py"]',
        # Fork from the process that ran the tests once: every import is warm, ~9 mutants/s on 2 cores.
        'process_isolation = "fork"',
        "use_git_change_detection = false",
        "",
    ])


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh copy of the checkout for this module, with mutmut's settings in its pyproject.toml."""
    work = WORK / short_name(module).replace("/", "-")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, work / name)
    shutil.copy2(PLUGIN, work / PLUGIN.name)
    with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write(mutmut_config(module, tests))
    return work


def short_name(module: str) -> str:
    """attest/verify for snpvirt/attest/verify.py: the stem alone is ambiguous (attest/ and image/ each have a verify)."""
    return str(Path(module).relative_to("snpvirt").with_suffix(""))


def resolve(name: str) -> str:
    """A module of MODULES from its path, its short name (image/verify) or its stem when only one module has it."""
    if name in MODULES:
        return name
    matches = [m for m in MODULES if name in (short_name(m), Path(m).stem)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        die(f"{name!r} names {len(matches)} modules", f"say which: {', '.join(short_name(m) for m in matches)}")
    die(f"unknown module {name!r}", f"one of: {', '.join(short_name(m) for m in MODULES)} (add it to MODULES in scripts/mutation.py)")
    raise AssertionError  # die() exits


def mutmut(work: Path, *args: str, module: str = "", log: Path | None = None) -> str:
    """Run mutmut in a work dir; with a log, the run's output goes there and a failure stops the script."""
    exe = Path(sys.executable).with_name("mutmut")
    env = dict(os.environ)
    env["SNPVIRT_MUTATION_MODULE"] = module.removesuffix(".py").replace("/", ".")
    if log is None:
        return subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True).stdout
    with open(log, "w", encoding="utf-8") as out, fast_tmpdir(work.name) as tmp:
        # Every mutant is a pytest session making its own tmp_path trees: on a RAM disk when there is one.
        proc = subprocess.run([str(exe), *args], cwd=work, env=env | ({"TMPDIR": tmp} if tmp else {}),
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        die(f"mutmut run failed in {work} (exit {proc.returncode}):\n{tail}", f"see {log}", 1)
    return ""


@contextlib.contextmanager
def fast_tmpdir(name: str) -> Iterator[str | None]:
    """A temporary directory in /dev/shm (tmpfs), removed afterwards; None where there is no /dev/shm.
    The host tests build a fake sysroot per test: on this machine's disk each mutant took ~9 s of mkdir."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield None
        return
    tmp = tempfile.mkdtemp(prefix=f"snpvirt-mutation-{name}-", dir=shm)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_results(work: Path) -> list[Mutant]:
    mutants = []
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            mutants.append(Mutant(name, status))
    return mutants


def function_lines(path: Path) -> dict[str, tuple[int, list[str]]]:
    """Each function and method of a file: its def line and its lines (Class.method for methods)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found: dict[str, tuple[int, list[str]]] = {}
    for node in ast.parse(text).body:
        members = [(node, node.name)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if isinstance(node, ast.ClassDef):
            members = [(item, f"{node.name}.{item.name}") for item in node.body
                       if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn, name in members:
            found[name] = (fn.lineno, lines[fn.lineno - 1:fn.end_lineno])
    return found


def describe(mutant: Mutant, original: dict[str, tuple[int, list[str]]], mutated: dict[str, tuple[int, list[str]]]) -> None:
    """Fill in the mutated line(s): what they were, what the mutant made of them, where they are.

    mutmut's copy of the module holds the original function as <mangled>__mutmut_orig next to each
    mutant <mangled>__mutmut_N; the two differ in the def line's name and in the mutation.
    """
    local = mutant.name.rsplit(".", 1)[1]  # x_name__mutmut_3 or xǁClassǁmethod__mutmut_3
    mangled = local.rsplit("__mutmut_", 1)[0]
    cls, _, short = mutant.function.rpartition(".")
    prefix = f"{cls}." if cls else ""
    orig, this = mutated.get(f"{prefix}{mangled}__mutmut_orig"), mutated.get(prefix + local)
    def_line = original.get(mutant.function, (0, []))[0]
    if orig is None or this is None:
        return
    old, new = orig[1], this[1]
    old = [old[0].replace(f"{mangled}__mutmut_orig", short)] + old[1:]
    new = [new[0].replace(local, short)] + new[1:]
    # mutmut rewrites a mutated statement on fewer lines at times: diff, do not compare line by line.
    changes = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if op[0] != "equal"]
    if not changes:
        return
    (_, old_start, _, new_start, _), (_, _, old_end, _, new_end) = changes[0], changes[-1]
    mutant.before = "\n".join(line.strip() for line in old[old_start:old_end])
    mutant.after = "\n".join(line.strip() for line in new[new_start:new_end])
    mutant.line = def_line + old_start


def load_equivalents() -> list[dict[str, str]]:
    if not EQUIVALENT_FILE.exists():
        return []
    try:
        entries = tomllib.loads(EQUIVALENT_FILE.read_text(encoding="utf-8")).get("equivalent", [])
    except tomllib.TOMLDecodeError as exc:
        die(f"{EQUIVALENT_FILE.relative_to(ROOT)}: {exc}", "fix the TOML; each [[equivalent]] has file, function, before, after, reason")
    for entry in entries:
        missing = [k for k in ("file", "function", "before", "after", "reason") if not str(entry.get(k, "")).strip()]
        if missing:
            die(f"{EQUIVALENT_FILE.relative_to(ROOT)}: an entry lacks {', '.join(missing)}: {entry}",
                "every equivalent mutant needs its place, both lines and the reason no test can kill it")
    return entries


def mark_equivalents(result: ModuleResult, entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """Mark the survivors the file explains; return this module's entries that matched no survivor."""
    unused = []
    for entry in (e for e in entries if e["file"] == result.path):
        matches = [m for m in result.mutants if m.status == "survived" and not m.equivalent
                   and m.function == entry["function"] and m.before == entry["before"].strip()
                   and m.after == entry["after"].strip()]
        for m in matches:
            m.equivalent = entry["reason"].strip()
        if not matches:
            unused.append(entry)
    return unused


def run_module(module: str, tests: list[str], jobs: int, entries: list[dict[str, str]]) -> ModuleResult:
    start = time.monotonic()
    work = prepare(module, tests)
    print(f"{module}: mutating, tests: {' '.join(tests)}", flush=True)
    mutmut(work, "run", "--max-children", str(jobs), module=module, log=work / "mutmut.log")
    result = ModuleResult(module, read_results(work))
    original, mutated = function_lines(ROOT / module), function_lines(work / "mutants" / module)
    for m in result.mutants:
        if m.status not in KILLED:
            describe(m, original, mutated)
    unused = mark_equivalents(result, entries)
    result.seconds = time.monotonic() - start
    report(result, unused)
    return result


def report(result: ModuleResult, unused: list[dict[str, str]]) -> None:
    total = len(result.mutants)
    verdict = "ok" if result.score >= TARGET else f"BELOW the {TARGET:.0%} target"
    print(f"{result.path}: {result.killed}/{total} killed ({result.score:.1%}), {verdict}  [{result.seconds:.0f} s]")
    for m in sorted((m for m in result.mutants if m.status not in KILLED), key=lambda m: m.line):
        label = "equivalent" if m.equivalent else m.status
        before, after = (" ".join(text.splitlines()) for text in (m.before, m.after))
        print(f"  {label:<10} {result.path}:{m.line}  {m.function}:  {before}  ->  {after}  ({m.name})")
    for entry in unused:
        print(f"  stale entry in {EQUIVALENT_FILE.relative_to(ROOT)}: {entry['function']}: {entry['before']} -> {entry['after']} "
              "matches no survivor (killed now, or the code changed): remove it")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module names (verify, snpvirt/attest/verify.py); default: all")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    args = parser.parse_args()
    chosen = []
    for name in args.modules or list(MODULES):
        module = resolve(name)
        if not (ROOT / module).is_file():
            die(f"{module} is not in this checkout", "remove it from MODULES in scripts/mutation.py, or name another module")
        chosen.append(module)
    if args.jobs < 1:
        die(f"-j {args.jobs}: needs at least 1", "give -j 1 or more")
    try:
        import mutmut as _  # noqa: F401
    except ImportError:
        die("mutmut is not installed", "run: .venv/bin/pip install -e '.[test,mutation]'")

    entries = load_equivalents()
    start = time.monotonic()
    results = [run_module(module, MODULES[module], args.jobs, entries) for module in chosen]
    print()
    print(f"{'module':<24} {'killed':>9} {'score':>7}  {'time':>6}")
    for r in results:
        flag = "" if r.score >= TARGET else "  below target"
        print(f"{r.path:<24} {r.killed:>4}/{len(r.mutants):<4} {r.score:>7.1%}  {r.seconds:>5.0f}s{flag}")
    print(f"whole run: {time.monotonic() - start:.0f} s; target {TARGET:.0%} killed per module")
    return 0 if all(r.score >= TARGET for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
