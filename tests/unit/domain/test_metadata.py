"""snpvirt's element under <metadata>: what import records, what a measurement record rewrites, what
`define XML` digests. Each is how snpvirt later recognises a domain as its own and tells an edited
document from an unchanged one, so each detail below is one a wrong record would get past."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from lxml import etree

from snpvirt import __version__
from snpvirt.domain import metadata
from snpvirt.domain.xml import METADATA_NS

NOW = "2026-11-26T00:00:00+00:00"
S = f"{{{METADATA_NS}}}"


def managed(launch: str = "") -> etree._Element:
    """A domain snpvirt defined from a spec, its element holding `launch` (XML inside <snpvirt:launch>)."""
    return etree.fromstring(f"""<domain type='kvm'><name>x</name><metadata>
        <snpvirt:domain xmlns:snpvirt='{METADATA_NS}' version='1' origin='spec'>
          <snpvirt:spec format='json' digest='sha256:ab'>{{"name": "x"}}</snpvirt:spec>{launch}
        </snpvirt:domain></metadata></domain>""")


def local_names(element: etree._Element) -> list[str]:
    return [etree.QName(child).localname for child in element]



# --- read: what snpvirt recorded, as every verb reads it back ----------------------------------------


def test_read_gives_back_every_part_of_the_record():
    root = managed("""<snpvirt:launch><snpvirt:kernel path='/boot/k' sha256='aa'/><!-- virsh edit keeps comments -->
        <snpvirt:cmdline>console=ttyS0</snpvirt:cmdline><?pi kept?><snpvirt:vcpus count='4'/></snpvirt:launch>
        <snpvirt:timestamps defined='2026-01-01' updated='2026-02-02'/>
        <snpvirt:seed pool='default' volume='x-seed.iso' sha256='bb'/>""")
    element = metadata.find(root)
    element.set("fleet", "web")
    element.set("xml_digest", "sha256:cd")
    assert metadata.read(root) == metadata.ManagedInfo(
        version="1", origin="spec", spec={"name": "x"}, digest="sha256:ab",
        launch={"kernel": {"path": "/boot/k", "sha256": "aa"}, "cmdline": "console=ttyS0", "vcpus": {"count": "4"}},
        defined_at="2026-01-01", updated_at="2026-02-02", xml_digest="sha256:cd",
        seed={"pool": "default", "volume": "x-seed.iso", "sha256": "bb"}, fleet="web")


def test_read_of_a_bare_record_says_what_is_missing():
    """An element without attributes or children (edited down by hand): managed, with nothing recorded."""
    root = etree.fromstring(f"<domain><metadata><snpvirt:domain xmlns:snpvirt='{METADATA_NS}' digest='sha256:ef'/>"
                            "</metadata></domain>")
    assert metadata.read(root) == metadata.ManagedInfo(version="", origin="spec", spec=None, digest="sha256:ef")
    assert metadata.read(etree.fromstring("<domain><metadata/></domain>")) is None, "not managed by snpvirt"


@pytest.mark.parametrize("spec_element", [
    "<snpvirt:spec format='json'>[1, 2]</snpvirt:spec>",
    "<snpvirt:spec format='json'>{not json</snpvirt:spec>",
    "<snpvirt:spec format='json'>" + "[" * 100_000 + "]" * 100_000 + "</snpvirt:spec>",
    "<snpvirt:spec format='toml'>{\"name\": \"x\"}</snpvirt:spec>",
    "<snpvirt:spec>{\"name\": \"x\"}</snpvirt:spec>",
    "<snpvirt:spec format='json'/>",
], ids=["not-a-table", "not-json", "nested-past-the-limit", "other-format", "no-format", "empty"])
def test_a_spec_edited_into_anything_but_a_json_table_reads_as_none(spec_element):
    root = etree.fromstring(f"<domain><metadata><snpvirt:domain xmlns:snpvirt='{METADATA_NS}' origin='spec'>{spec_element}"
                            "</snpvirt:domain></metadata></domain>", etree.XMLParser(huge_tree=True))
    info = metadata.read(root)
    assert info is not None and info.spec is None

# --- add_import_record: where the element goes, what it says ------------------------------------------


@pytest.mark.parametrize("document, after", [
    ("<domain><name>x</name><uuid>u</uuid><os/></domain>", "uuid"),
    ("<domain><name>x</name><os/></domain>", "name"),
    ("<domain><os/></domain>", None),
], ids=["after uuid", "after name", "first"])
def test_the_import_record_goes_where_libvirt_writes_metadata(document, after):
    root = etree.fromstring(document)
    metadata.add_import_record(root, b"<original/>", NOW)
    where = [child.tag for child in root].index("metadata")
    assert (root[where - 1].tag if where else None) == after
    assert len(root.findall("metadata")) == 1


def test_the_import_record_says_what_was_imported_and_when():
    root = etree.fromstring("<domain><name>x</name></domain>")
    metadata.add_import_record(root, b"<domain><name>x</name></domain>", NOW)
    info = metadata.read(root)
    assert (info.version, info.origin, info.spec) == (__version__, "import", None)
    assert info.digest == "sha256:" + hashlib.sha256(b"<domain><name>x</name></domain>").hexdigest()
    assert (info.defined_at, info.updated_at) == (NOW, NOW)
    element = metadata.find(root)
    assert element.prefix == "snpvirt", "libvirt keeps a metadata element under the prefix it was given"


def test_the_import_record_joins_other_tools_metadata_and_replaces_an_old_record():
    root = etree.fromstring(f"""<domain><name>x</name><metadata>
        <app:vm xmlns:app='https://example.org/app'>kept</app:vm>
        <snpvirt:domain xmlns:snpvirt='{METADATA_NS}' origin='import' digest='sha256:old'/>
        </metadata></domain>""")
    metadata.add_import_record(root, b"<new/>", NOW)
    [element] = root.findall("metadata")
    assert [etree.QName(child).localname for child in element] == ["vm", "domain"], "one record, the other tool's kept"
    assert metadata.read(root).digest == "sha256:" + hashlib.sha256(b"<new/>").hexdigest()


# --- spec_diff: every changed key, including ones only one side has ----------------------------------


def test_spec_diff_names_keys_added_removed_and_changed_in_lists_of_tables():
    old = {"vcpus": 4, "memory": "4G", "disks": [{"path": "/a"}, {"path": "/b"}]}
    new = {"vcpus": 4, "boot": {"cmdline": "quiet"}, "disks": [{"path": "/a"}, {"path": "/c"}]}
    assert metadata.spec_diff(old, new) == [
        {"key": "boot.cmdline", "from": None, "to": "quiet"},
        {"key": "disks.1.path", "from": "/b", "to": "/c"},
        {"key": "memory", "from": "4G", "to": None},
    ]
    assert metadata.spec_diff(None, {"vcpus": 2}) == [{"key": "vcpus", "from": None, "to": 2}]


# --- typed_launch: counts and sizes as numbers, nothing else ------------------------------------------


def test_typed_launch_makes_numbers_of_counts_and_sizes_only():
    launch = {"vcpus": {"count": "4", "type": "123"}, "kernel": {"path": "/boot/7", "size": "2048", "sha256": "42"},
              "initrd": {"size": "\u0663"},  # an Arabic-Indic three: a digit to str.isdigit, not a number to the user
              "cmdline": "console=ttyS0 2", "policy": {"count": "many"}}
    assert metadata.typed_launch(launch) == {
        "vcpus": {"count": 4, "type": "123"}, "kernel": {"path": "/boot/7", "size": 2048, "sha256": "42"},
        "initrd": {"size": "\u0663"}, "cmdline": "console=ttyS0 2", "policy": {"count": "many"}}


# --- with_launch_inputs / with_measurement: the record `measure --record` writes ----------------------


def test_launch_inputs_replace_the_old_ones_in_order_and_keep_the_rest():
    element = metadata.find(managed("""<snpvirt:launch><snpvirt:kernel path='/old'/><snpvirt:cmdline>old</snpvirt:cmdline>
        <snpvirt:measurement value='aa'/></snpvirt:launch>"""))
    before = etree.tostring(element)
    inputs = {"policy": {"value": "0x30000"}, "firmware": {"path": "/fw", "sha256": None}, "kernel": None,
              "cmdline": "console=ttyS0", "vcpus": {"count": 4, "type": "EPYC-v4"}, "unknown": "x"}
    launch = metadata.with_launch_inputs(element, inputs).find("snpvirt:launch", {"snpvirt": METADATA_NS})
    assert local_names(launch) == ["firmware", "cmdline", "vcpus", "policy", "measurement"]
    assert dict(launch[0].attrib) == {"path": "/fw"}, "an attribute without a value is left out"
    assert launch[1].text == "console=ttyS0" and dict(launch[2].attrib) == {"count": "4", "type": "EPYC-v4"}
    assert launch[4].get("value") == "aa", "the recorded measurement is not a launch input: it stays"
    assert etree.tostring(element) == before, "a copy: the caller compares it with the original"


def test_launch_inputs_go_into_a_new_launch_element_for_an_imported_domain():
    element = metadata.find(managed())
    launch = metadata.with_launch_inputs(element, {"vcpus": {"count": 2}}).find(f"{S}launch")
    assert launch is not None and local_names(launch) == ["vcpus"] and launch[0].get("count") == "2"
    assert element.find(f"{S}launch") is None


def test_a_measurement_record_replaces_the_old_one():
    element = metadata.find(managed("<snpvirt:launch><snpvirt:cmdline>c</snpvirt:cmdline>"
                                    "<snpvirt:measurement value='old'/></snpvirt:launch>"))
    expected = SimpleNamespace(value="ab" * 48, vcpu_signature=0xA10F11, guest_features=0x1)
    recorded = metadata.with_measurement(element, expected)
    launch = recorded.find(f"{S}launch")
    assert local_names(launch) == ["cmdline", "measurement"]
    assert dict(launch[1].attrib) == {"value": "ab" * 48, "vcpu_signature": "0xa10f11", "guest_features": "0x1",
                                      "source": "recorded from local copies"}
    assert element.find(f"{S}launch/{S}measurement").get("value") == "old", "the original is left alone"
    fresh = metadata.with_measurement(metadata.find(managed()), expected)
    assert metadata.read(etree.fromstring(f"<domain><metadata>{etree.tostring(fresh).decode()}</metadata></domain>")) \
        .launch["measurement"]["value"] == "ab" * 48


def test_without_namespace_gives_plain_names_for_libvirt_to_qualify():
    element = metadata.find(managed("<snpvirt:launch><snpvirt:cmdline>c</snpvirt:cmdline></snpvirt:launch>"))
    plain = metadata.without_namespace(element)
    assert isinstance(plain, str) and METADATA_NS not in plain and "snpvirt:" not in plain
    assert plain.startswith("<domain ") and "<launch><cmdline>c</cmdline></launch>" in plain
    assert element.tag == f"{S}domain", "the element itself keeps its namespace"


# --- content_digest: the document without snpvirt's element, in canonical form -------------------------


def test_content_digest_ignores_snpvirts_element_and_the_serialisation():
    plain = etree.fromstring("<domain type='kvm' id='1'><name>x</name><metadata/><devices/></domain>")
    reformatted = etree.fromstring('<domain id="1" type="kvm"><name>x</name><metadata/><devices></devices></domain>')
    ours = etree.fromstring(f"<domain type='kvm' id='1'><name>x</name><metadata><snpvirt:domain xmlns:snpvirt='{METADATA_NS}' "
                            "origin='import'/></metadata><devices/></domain>")
    canonical = etree.tostring(plain, method="c14n")
    assert metadata.content_digest(plain) == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert metadata.content_digest(reformatted) == metadata.content_digest(plain), "attribute order, quotes, empty tags"
    assert metadata.content_digest(ours) == metadata.content_digest(plain), "snpvirt's own element is not content"
    assert metadata.find(ours) is not None, "digesting does not strip the caller's document"
    edited = etree.fromstring("<domain type='kvm' id='1'><name>y</name><metadata/><devices/></domain>")
    assert metadata.content_digest(edited) != metadata.content_digest(plain)
