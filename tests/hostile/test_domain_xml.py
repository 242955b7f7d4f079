"""Hostile domain XML for `validate` and `import`: entities, huge attributes, wrong namespaces,
garbage and non-UTF-8 bytes, odd values where the SNP rules and the importer look."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import etree

from snpvirt.domxml import METADATA_NS
from tests.conftest import EXAMPLES, GOLDEN, vector
from tests.hostile.conftest import SPECIAL_INPUTS, make_special, run_with_special
from tests.hostile.contract import assert_contract, run_in_process
from tests.hostile.strategies import huge_text, odd_text

HOSTILE = settings.get_profile("hostile")

# Real documents: snpvirt's own renders, virt-install's SNP and plain-SEV domains, libvirt's SNP test file.
SOURCES = [GOLDEN / "web-01.xml", GOLDEN / "db-01.xml", "virt-manager/virt-install-x86_64-launch-security-sev-snp.xml",
           "virt-manager/virt-install-amd-sev.xml", "libvirt/qemuxmlconfdata/launch-security-sev-snp.xml"]


def source_bytes(index: int) -> bytes:
    source = SOURCES[index]
    return (source if isinstance(source, Path) else vector(source)).read_bytes()


SNIPPETS = [
    "<launchSecurity type='sev-snp'><policy>0x" + "f" * 5000 + "</policy></launchSecurity>",
    "<launchSecurity type='sev-snp'><policy>\u0663\u0660000</policy><cbitpos>99999999999999999999999</cbitpos>"
    "<idBlock>!!</idBlock><idAuth>" + "A" * 8000 + "</idAuth></launchSecurity>",
    "<launchSecurity type='sev-snp' kernelHashes='yes' authorKey='yes'/>",
    "<launchSecurity type='sev'><policy>0x33</policy></launchSecurity>",
    "<launchSecurity/>",
    f"<metadata><s:domain xmlns:s='{METADATA_NS}' version='\u202e' origin='import' digest='sha256:zz'>"
    "<s:spec format='json'>" + "[" * 3000 + "]" * 3000 + "</s:spec>"
    "<s:launch><!-- a comment --><?pi here?><s:measurement value='zz'/>text</s:launch><s:timestamps/></s:domain></metadata>",
    f"<metadata><s:domain xmlns:s='{METADATA_NS}'><s:spec format='json'>{{\"name\": [1, {{}}]}}</s:spec>"
    "<s:launch><s:firmware/><s:vcpus count='x'/></s:launch></s:domain></metadata>",
    f"<metadata><s:domain xmlns:s='{METADATA_NS}'><s:spec format='json'>7</s:spec></s:domain></metadata>",
    "<os><type arch='x86_64' machine='q35'>hvm</type><loader/><nvram/><kernel/></os>",
    "<os firmware='efi'><!-- c --><loader type='pflash'>/\u0663</loader></os>",
    "<os/>",
    "<devices><disk type='file'><target dev='vda' bus='virtio'/><driver/></disk>"
    "<interface type='network'><model type='virtio'/></interface><!-- c --></devices>",
    "<features><smm state='on'/><smm/></features>",
    "<name>a/../../b\u202e</name>",
    "<name/>",
    "<uuid>not-a-uuid</uuid>",
    "<vcpu>99999999999999999999999999</vcpu>",
    "<memory unit='EiB'>18446744073709551615</memory>",
]
ATTRIBUTES = ["type", "machine", "arch", "firmware", "stateless", "kernelHashes", "authorKey", "state", "bus",
              "iommu", "unit", "dev", "{http://evil.example/}type", "{" + METADATA_NS + "}x", "xmlns-ish"]
TAGS = ["domain", "launchSecurity", "policy", "os", "loader", "nvram", "metadata", "{http://evil.example/}domain",
        "{" + METADATA_NS + "}domain", "devices", "name"]

element_index = st.integers(min_value=0, max_value=10_000)
tree_edits = st.lists(st.one_of(
    st.tuples(st.just("attribute"), element_index, st.tuples(st.sampled_from(ATTRIBUTES), st.one_of(odd_text, huge_text))),
    st.tuples(st.just("text"), element_index, st.one_of(odd_text, huge_text)),
    st.tuples(st.just("remove"), element_index, st.none()),
    st.tuples(st.just("duplicate"), element_index, st.none()),
    st.tuples(st.just("insert"), element_index, st.sampled_from(SNIPPETS)),
    st.tuples(st.just("rename"), element_index, st.sampled_from(TAGS)),
), max_size=5)


def edit_tree(data: bytes, edits) -> bytes:
    root = etree.fromstring(data)
    for op, index, value in edits:
        elements = list(root.iter(tag=etree.Element))
        element = elements[index % len(elements)]
        try:
            if op == "attribute":
                element.set(*value)
            elif op == "text":
                element.text = value
            elif op == "remove" and element is not root:
                element.getparent().remove(element)
            elif op == "duplicate" and element is not root:
                element.addnext(etree.fromstring(etree.tostring(element)))
            elif op == "insert":
                element.append(etree.fromstring(value))
            elif op == "rename":
                element.tag = value
        except ValueError:
            continue  # lxml refuses what XML cannot hold (control characters); the byte edits add those
    return etree.tostring(root)


PASSWD_MARK = b"root:x:0:0"  # what an XXE reading /etc/passwd would leak into the output
PROLOGUES = [
    b'<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>',
    b'<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/domain.dtd">',
    b'<?xml version="1.0" encoding="ISO-8859-1"?>',
    b'<?xml version="1.0" encoding="UTF-16"?>',
    b'<?xml version="1.0" encoding="x-no-such-encoding"?>',
    b'<?xml version="2.0"?>',
    b"\xef\xbb\xbf",
    b"\xff\xfe",
]
RAW_BYTES = [b"\x00", b"\xff", b"\xe9", b"\x0b", b"\x1b", b"]]>", b"<", b"&", b"&xxe;", b"&f;", b"<![CDATA[",
             b"<!--", b"\xed\xa0\x80", b"\xc0\xaf"]
byte_edits = st.lists(st.one_of(
    st.tuples(st.just("prologue"), st.sampled_from(PROLOGUES)),
    st.tuples(st.just("entity-in-name"), st.sampled_from([b"&xxe;", b"&f;", b"&undefined;"])),
    st.tuples(st.just("huge-attribute"), st.sampled_from([100_000, 1_100_000, 11_000_000])),
    st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.one_of(st.sampled_from(RAW_BYTES), st.binary(max_size=6)))),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("utf16"), st.booleans()),
    st.tuples(st.just("namespace"), st.sampled_from([b"http://evil.example/", b"", METADATA_NS.encode()])),
), max_size=4)


def edit_bytes(data: bytes, edits) -> bytes:
    for op, value in edits:
        if op == "prologue":
            data = value + data
        elif op == "entity-in-name":
            data = data.replace(b"</name>", value + b"</name>", 1)
        elif op == "huge-attribute":
            data = data.replace(b"<domain", b'<domain huge="' + b"x" * value + b'"', 1)
        elif op == "insert":
            at = int(value[0] * len(data))
            data = data[:at] + value[1] + data[at:]
        elif op == "truncate":
            data = data[:int(value * len(data))]
        elif op == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16" if value else "utf-16-le")
        elif op == "namespace":
            data = data.replace(b"<domain", b'<domain xmlns="' + value + b'"', 1)
    return data


def hostile_document(source: int, tree, raw) -> bytes:
    return edit_bytes(edit_tree(source_bytes(source), tree), raw)


def check_no_entity_content(result) -> None:
    assert PASSWD_MARK not in result.stdout + result.stderr, "an external entity was expanded\n" + result.describe()


@pytest.fixture(scope="module")
def empty_test_driver(workdir) -> str:
    """A private libvirt test driver per connection (test:///FILE): imports never touch test:///default."""
    node = workdir / "empty-node.xml"
    node.write_text("<node/>\n")
    return f"test://{node}"


@HOSTILE
@given(source=st.integers(0, len(SOURCES) - 1), tree=tree_edits, raw=byte_edits)
@example(source=0, tree=[], raw=[("prologue", PROLOGUES[0]), ("entity-in-name", b"&xxe;")])
@example(source=0, tree=[], raw=[("prologue", PROLOGUES[1]), ("entity-in-name", b"&f;")])
@example(source=0, tree=[], raw=[("huge-attribute", 11_000_000)])
def test_validate_hostile_xml(source, tree, raw):
    with tempfile.TemporaryDirectory(prefix="hostile-xml-") as folder:
        path = Path(folder) / "vm.xml"
        path.write_bytes(hostile_document(source, tree, raw))
        result = run_in_process("validate", path, path, "--json")
        assert_contract(result)
        assert result.code in (0, 2), result.describe()
        check_no_entity_content(result)


IMPORT_FLAGS = [[], ["--fix"], ["--fix", "--check", "--print-diff"], ["--fix", "--firmware", "/\u0663 odd\u202e.fd"]]


@HOSTILE
@given(source=st.integers(0, len(SOURCES) - 1), tree=tree_edits, raw=byte_edits, flags=st.sampled_from(IMPORT_FLAGS))
@example(source=0, tree=[], raw=[("truncate", 0.5)], flags=[])  # not XML: was 'internal error: XMLSyntaxError'
@example(source=0, tree=[("insert", 0, SNIPPETS[5])], raw=[], flags=["--fix"])
def test_import_hostile_xml(empty_test_driver, source, tree, raw, flags):
    with tempfile.TemporaryDirectory(prefix="hostile-import-") as folder:
        path = Path(folder) / "vm.xml"
        path.write_bytes(hostile_document(source, tree, raw))
        result = run_in_process("import", path, "-c", empty_test_driver, "--json", *flags)
        assert_contract(result)
        check_no_entity_content(result)


def test_regression_import_of_a_file_that_is_not_xml(empty_test_driver, workdir):
    """Found by this tier: `import` of a file that is not XML ended in 'internal error: XMLSyntaxError'."""
    path = workdir / "not-xml.xml"
    path.write_bytes(b"garbage, not <xml")
    result = run_in_process("import", path, "-c", empty_test_driver, "--json")
    doc = assert_contract(result)
    assert result.code == 2 and doc["error"]["kind"] == "bad_input", result.describe()
    assert "not well-formed XML" in doc["error"]["message"], result.describe()


# --- XML files that are not regular files (real processes: these can hang) ---------------------------

@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
def test_validate_a_file_that_is_not_a_regular_file(workdir, kind):
    path = make_special(kind, workdir / "validate-inputs", "vm.xml")
    result = run_with_special(kind, "validate", path, "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()


@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
def test_import_a_file_that_is_not_a_regular_file(workdir, empty_test_driver, kind):
    path = make_special(kind, workdir / "import-inputs", "vm.xml")
    result = run_with_special(kind, "import", path, "-c", empty_test_driver, "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()


@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
def test_host_caps_that_are_not_a_regular_file(workdir, kind):
    path = make_special(kind, workdir / "host-caps-inputs", "domcaps.xml")
    result = run_with_special(kind, "render", EXAMPLES / "db-01.toml", "--host-caps", path, "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()
