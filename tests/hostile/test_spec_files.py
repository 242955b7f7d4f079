"""Hostile spec files and `--set` overrides: render answers with a clean error or a checked document,
and never touches its `-o` target on failure."""

from __future__ import annotations

import copy
import itertools
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from snpvirt import policy as snp_policy
from snpvirt.domain import spec as specs
from tests.conftest import EXAMPLES, vector
from tests.hostile.conftest import SPECIAL_INPUTS, SPECIAL_OUTPUTS, make_output, make_special, run_with_special
from tests.hostile.contract import Snapshot, assert_contract, run_in_process, run_subprocess
from tests.hostile.strategies import RawToml, nested, odd_text, toml_document, toml_string, toml_value, values

HOSTILE = settings.get_profile("hostile")
BASE_TEXT = (EXAMPLES / "web-01.toml").read_text()
BASE = tomllib.loads(BASE_TEXT)


def _key_paths(schema: dict, prefix: tuple = ()) -> list[tuple]:
    paths = []
    for key, rule in schema.items():
        path = (*prefix, key)
        paths.append(path)
        if isinstance(rule, dict):
            paths += _key_paths(rule, path)
        elif isinstance(rule, list):
            paths += _key_paths(rule[0], (*path, 0))
    return paths


KEY_PATHS = _key_paths(specs.SCHEMA) + [("snp", "policy", f) for f in snp_policy.FIELDS] + [
    ("bogus",), ("snp", "bogus"), ("boot", "bogus"), ("disks", 0, "bogus"), ("disks", 5, "path"), ("networks", 1)]


def _put(node: dict | list, key: str | int, value) -> None:
    if isinstance(node, list):
        node.extend({} for _ in range(key + 1 - len(node)))
    node[key] = value


def _set(doc: dict, path: tuple, value) -> None:
    """Put `value` at `path` (keys and array indexes), making the tables and arrays on the way."""
    node = doc
    for part, following in zip(path, path[1:]):
        child = node.get(part) if isinstance(node, dict) else (node[part] if part < len(node) else None)
        wanted = list if isinstance(following, int) else dict
        if not isinstance(child, wanted):
            child = wanted()
            _put(node, part, child)
        node = child
    _put(node, path[-1], value)


def _delete(doc: dict, path: tuple) -> None:
    node = doc
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)
    elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        del node[path[-1]]


edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEY_PATHS), values),
    st.tuples(st.just("delete"), st.sampled_from(KEY_PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from([(), ("snp",), ("boot",), ("disks", 0)]), st.tuples(odd_text, values)),
), min_size=1, max_size=4)


def hostile_spec(changes) -> str:
    return toml_document(edited(BASE, changes))


def edited(base: dict, changes) -> dict:
    """A copy of `base` with the generated edits made (set, delete, add a key)."""
    doc = copy.deepcopy(base)
    for op, path, value in changes:
        if op == "set":
            _set(doc, path, value)
        elif op == "delete":
            _delete(doc, path)
        else:
            key, item = value
            _set(doc, (*path, key), item)
    return doc


# Byte-level damage to the real example: what an editor, a bad copy or a hostile file makes.
HOSTILE_BYTES = [b"\x00", b"\xff", b"\xe9", b"\xc3", b"\xef\xbb\xbf", b"\r", b"\x1b[2J", b'"""', b"'''", b"[[",
                 b"[", b"=", b"\n[snp]\n", b"\n[[disks]]\n", b"\nname = 1\n", b"\\u0000", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
byte_edits = st.lists(st.tuples(st.floats(0, 1), st.one_of(st.sampled_from(HOSTILE_BYTES), st.binary(max_size=8)),
                                st.integers(0, 40)), min_size=1, max_size=5)


def damaged(edits_) -> bytes:
    data = bytearray(BASE_TEXT.encode())
    for where, insert, delete in edits_:
        at = int(where * len(data))
        data[at:at + delete] = insert
    return bytes(data)


def render_and_check(spec_bytes: bytes, *extra: str):
    """render SPEC -o TARGET --json: the contract, and the target kept unless the run succeeded."""
    with tempfile.TemporaryDirectory(prefix="hostile-spec-") as folder:
        spec = Path(folder) / "vm.toml"
        spec.write_bytes(spec_bytes)
        target = make_output("regular", Path(folder) / "out")
        before = Snapshot.of(target)
        result = run_in_process("render", spec, "-o", target, "--json", *extra)
        doc = assert_contract(result)
        if result.code != 0:
            before.assert_unchanged(result)
        else:
            assert target.read_bytes().startswith(b"<domain"), result.describe()
        return result, doc


def test_the_unharmed_example_renders():
    """The harness can succeed: without this, a tier where everything fails would pass."""
    result, doc = render_and_check(BASE_TEXT.encode())
    assert result.code == 0 and doc["results"][0]["name"] == "web-01"


@HOSTILE
@given(changes=edits)
@example(changes=[("set", ("memory_mib",), nested(3000))])  # tomllib recursed until RecursionError
@example(changes=[("set", ("vcpus",), RawToml("9" * 5000))])  # int() past the digit limit: ValueError
@example(changes=[("set", ("snp", "policy"), RawToml("-" + "1" * 4301))])
@example(changes=[("set", ("description",), "\x00\x1b\u2028" * 1000)])
@example(changes=[("set", ("snp", "policy", "abi_major"), 2 ** 64)])
@example(changes=[("set", ("memory_mib",), RawToml("0x" + "f" * 5000))])  # parsed, then str() of it in the message
@example(changes=[("set", ("snp", "policy", "abi_minor"), RawToml("0x" + "f" * 5000))])
@example(changes=[("add", (), ("\x0b", ""))])  # the key was printed raw: stderr had a line break mid-message
@example(changes=[("add", ("snp",), ("a\nsnpvirt: error: forged\x1b[2J", 1))])
@example(changes=[("add", (), ("a\u2028b", 1))])  # a line break for splitlines(), which printable() let through
def test_hostile_spec_values(changes):
    render_and_check(hostile_spec(changes).encode())


@HOSTILE
@given(edits_=byte_edits)
def test_damaged_spec_bytes(edits_):
    render_and_check(damaged(edits_))


# --- --set ---------------------------------------------------------------------------------------

dotted = st.sampled_from([".".join(map(str, p)) for p in KEY_PATHS])
set_keys = st.one_of(dotted, dotted.map(lambda k: k + ".x"), odd_text.filter(lambda t: "\x00" not in t),
                     st.sampled_from(["", ".", "..", "a..b", "disks.00.path", "disks.-1.path", "disks.\u0663.path",
                                      "disks.99999999999999999999999.path", "snp.policy.smt.deeper", "name.x", " vcpus ",
                                      "disks.0", "networks", "snp"]))
# A real argv cannot hold NUL; bytes that are not UTF-8 arrive as lone surrogates (surrogateescape).
set_values = st.one_of(values.map(toml_value), odd_text, st.sampled_from(["\udcff", "name\udce9", "=", "==", ""])
                       ).filter(lambda t: "\x00" not in t)
assignments = st.lists(st.one_of(st.tuples(set_keys, set_values).map("=".join), set_keys), min_size=1, max_size=4)


@HOSTILE
@given(sets=assignments)
@example(sets=["vcpus=" + "[" * 5000 + "]" * 5000])  # a TOML value nested past the recursion limit
@example(sets=["snp.policy=" + "1" * 5000])  # past the int digit limit
@example(sets=["snp.policy.smt=" + "9" * 5000])
@example(sets=["snp.policy=0x" + "f" * 5000])
@example(sets=["disks.0.path=" + nested(2500)])
def test_hostile_set_overrides(sets):
    render_and_check(BASE_TEXT.encode(), *itertools.chain.from_iterable(("--set", s) for s in sets))


def test_regression_deep_nesting_is_bad_input_not_an_internal_error():
    """Found by this tier: a spec nested deeper than Python's recursion limit was 'internal error:
    RecursionError', and a number longer than 4300 digits 'internal error: ValueError'."""
    for text in ("v = " + "[" * 3000 + "]" * 3000 + "\n", "v = " + "9" * 5000 + "\n"):
        result, doc = render_and_check(text.encode())
        assert result.code == 2 and doc["error"]["kind"] == "bad_input", result.describe()


# --- spec paths and launch files that are not regular files (real processes: these can hang) ---------

@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
def test_spec_file_that_is_not_a_regular_file(workdir, kind):
    spec = make_special(kind, workdir / "spec-files", "spec")
    target = make_output("regular", workdir / f"spec-target-{kind}")
    before = Snapshot.of(target)
    result = run_with_special(kind, "render", spec, "-o", target, "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()
    before.assert_unchanged(result)


@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
@pytest.mark.parametrize("key", ["firmware", "boot.kernel", "boot.initrd"])
def test_launch_file_that_is_not_a_regular_file(workdir, key, kind):
    """A launch input that is a device, a FIFO or huge must be refused (or be 'unknown' when absent), fast."""
    path = make_special(kind, workdir / "launch-files", key)
    result = run_with_special(kind, "render", EXAMPLES / "web-01.toml", "--set", f"{key}={toml_string(str(path))}", "--json")
    assert_contract(result)


def test_spec_file_named_with_bytes_that_are_not_utf8(workdir):
    folder = workdir / "non-utf8-names"
    folder.mkdir(exist_ok=True)
    spec = folder / b"\xe9\xff.toml".decode("utf-8", "surrogateescape")
    spec.write_bytes(BASE_TEXT.encode())
    assert_contract(run_subprocess("render", spec, "--json"))
    spec.write_bytes(b"name = ")
    assert_contract(run_subprocess("render", spec, "--json"))


@pytest.mark.parametrize("kind", SPECIAL_OUTPUTS)
def test_render_output_target_kinds(workdir, kind):
    """-o onto a FIFO, a device, a link or a folder: refused or written safely, never through or over it."""
    target = make_output(kind, workdir / f"targets-{kind}")
    before = Snapshot.of(target)
    link_target = Snapshot.of(target.resolve()) if target.is_symlink() else None
    result = run_subprocess("render", EXAMPLES / "web-01.toml", "-o", target, "--json")
    assert_contract(result)
    if kind in ("fifo", "char-device", "link-to-char-device", "directory"):
        assert result.code == 2, result.describe()
        before.assert_unchanged(result)
        if link_target is not None:
            link_target.assert_unchanged(result)
    elif result.code != 0:
        before.assert_unchanged(result)


@pytest.mark.parametrize("sets", [["vcpus=1000000000"], [f"vcpus={2 ** 64}"], ["memory_mib=" + str(2 ** 64)]])
def test_huge_counts_end_quickly(sets):
    result = run_in_process("render", EXAMPLES / "web-01.toml", *itertools.chain.from_iterable(("--set", s) for s in sets),
                            "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()


@pytest.mark.parametrize("vcpus", ["1000000000", str(2 ** 64), "-1", "0"])
def test_measure_with_huge_vcpu_counts_ends_quickly(vcpus):
    """measure folds one VMSA page per vCPU: an unbounded count ran until killed."""
    result = run_subprocess("measure", "--firmware", vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"), "--vcpus", vcpus,
                            "--vcpu-type", "EPYC-v4", "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()


@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
@pytest.mark.parametrize("option", ["--firmware", "--kernel", "--initrd"])
def test_measure_inputs_that_are_not_regular_files(workdir, option, kind):
    path = make_special(kind, workdir / f"measure{option}", option.strip("-"))
    files = {"--firmware": vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"),
             "--kernel": vector("measurement/derived-inputs/kernel.bin"),
             "--initrd": vector("measurement/derived-inputs/initrd.bin")}
    files[option] = path
    result = run_with_special(kind, "measure", *itertools.chain.from_iterable(files.items()), "--vcpus", "1",
                              "--vcpu-type", "EPYC-v4", "--json")
    assert_contract(result)
    assert result.code == (0 if kind == "empty" and option != "--firmware" else 2), result.describe()
