"""Domain XML and domcaps files come from anyone: no entity is expanded, so no file's content (nor an
entity's text) reaches the parsed tree, a finding, a definition or any output. Checking the findings'
messages alone is not enough: with entity resolution on, /etc/passwd lands in <description> and the
messages still look clean."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from snpvirt.host import domcaps
from snpvirt.domain import xml as domxml
from tests.conftest import GOLDEN, run_cli, vector

SECRET = "SNPVIRT-SECRET-FILE-CONTENT"  # a local file's content, read through an external entity
PASSWD = "root:x:0:0"  # the first line of /etc/passwd on every Linux
DTD_TEXT = "SNPVIRT-ENTITY-FROM-AN-EXTERNAL-DTD"  # defined in a DTD loaded through a parameter entity
INTERNAL = "SNPVIRT-INTERNAL-ENTITY-TEXT"  # an entity declared in the document itself
FROM_FILES = (SECRET, PASSWD, DTD_TEXT)  # never in the document's own text, so never in any output


@pytest.fixture
def entities(tmp_path):
    """The DOCTYPE of a hostile document, and a line that uses every entity it declares."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n")
    dtd = tmp_path / "leak.dtd"  # the out-of-band classic: a parameter entity pulls in more declarations
    dtd.write_text(f'<!ENTITY dtdtext "{DTD_TEXT}">\n<!ENTITY dtdfile SYSTEM "{secret.as_uri()}">\n')
    doctype = (f'<!DOCTYPE domain [\n  <!ENTITY secret SYSTEM "{secret.as_uri()}">\n'
               '  <!ENTITY passwd SYSTEM "file:///etc/passwd">\n'
               f'  <!ENTITY inner "{INTERNAL}">\n  <!ENTITY % leak SYSTEM "{dtd.as_uri()}">\n  %leak;\n]>\n')
    return doctype, "<description>&secret; &passwd; &inner; &dtdtext; &dtdfile;</description>"


def hostile_file(tmp_path, entities, source: str, after: str, name: str):
    doctype, uses = entities
    assert after in source
    path = tmp_path / name
    path.write_text(doctype + source.replace(after, f"{after}\n  {uses}", 1))
    return path


@pytest.fixture
def hostile_golden(tmp_path, entities):
    return hostile_file(tmp_path, entities, (GOLDEN / "web-01.xml").read_text(), "<name>web-01</name>", "web-01.xml")


@pytest.fixture
def hostile_import(tmp_path, entities):
    """virt-manager's legacy SEV domain: import --fix would otherwise define it."""
    source = vector("virt-manager/virt-install-amd-sev.xml").read_text()
    return hostile_file(tmp_path, entities, source, "<name>linux2020</name>", "linux2020.xml")


def assert_no_entity_content(*texts: str, markers=(*FROM_FILES, INTERNAL)) -> None:
    for text in texts:
        leaked = [marker for marker in markers if marker in text]
        assert not leaked, f"entity content {leaked} in: {text[:500]}"


def everything_in(root: etree._Element) -> list[str]:
    """The serialized tree, and every text, tail and attribute value in it."""
    values = [etree.tostring(root, encoding="unicode")]
    for node in root.iter():
        values += [node.text or "", node.tail or "", *node.attrib.values()]
    return values


def test_the_parsed_tree_holds_no_entity_content(hostile_golden):
    root = domxml.parse(hostile_golden.read_bytes())
    assert root.findtext("name") == "web-01" and root.find("description") is not None, "the document was parsed"
    assert_no_entity_content(*everything_in(root))


def test_findings_hold_no_entity_content(hostile_golden):
    findings = domxml.check(hostile_golden.read_bytes())
    assert findings, "the unexpanded entities leave the document invalid"
    assert_no_entity_content(*(f.message + f.hint for f in findings))


@pytest.mark.parametrize("args", [
    ["validate", "{golden}"],
    ["validate", "{golden}", "--json"],
    ["define", "{golden}", "-c", "test:///default", "--json"],
    ["import", "{imported}", "--fix", "--check", "--print-diff", "--json", "-c", "test:///default"],
    ["import", "{imported}", "--fix", "--print-diff", "-c", "test:///default"],
], ids=["validate", "validate-json", "define", "import-check-diff", "import-fix"])
def test_no_command_outputs_entity_content(hostile_golden, hostile_import, args):
    run = run_cli(*(a.format(golden=hostile_golden, imported=hostile_import) for a in args))
    assert run.code != 0 and "Traceback" not in run.stderr, "refused cleanly: the entities stay unresolved"
    # INTERNAL is in the document's own DOCTYPE, which a diff of the document shows as it is.
    assert_no_entity_content(run.stdout, run.stderr, markers=FROM_FILES)
    if "--json" in args:
        json.loads(run.stdout)


def test_domcaps_values_never_come_from_an_entity(tmp_path):
    """A saved domcaps file whose cbitpos and SNP support would be read from local files."""
    (tmp_path / "cbitpos").write_text("47")
    (tmp_path / "sectype").write_text("sev-snp")
    source = vector("virt-manager/kvm-x86_64-domcaps-amd-sev.xml").read_text()
    cbitpos = source[source.index("<cbitpos>"):source.index("</cbitpos>") + len("</cbitpos>")]
    doctype = (f'<!DOCTYPE domainCapabilities [\n  <!ENTITY cbit SYSTEM "{(tmp_path / "cbitpos").as_uri()}">\n'
               f'  <!ENTITY snp SYSTEM "{(tmp_path / "sectype").as_uri()}">\n]>\n')
    sectype = "<launchSecurity supported='yes'><enum name='sectype'><value>&snp;</value></enum></launchSecurity>"
    hostile = doctype + source.replace(cbitpos, "<cbitpos>&cbit;</cbitpos>").replace("</features>", sectype + "</features>")
    caps = domcaps.parse_domcaps(hostile)
    assert caps.sev_supported and caps.cbitpos is None and not caps.snp_advertised


def test_an_entity_bomb_is_refused_quickly():
    """Nested internal entities (a 'billion laughs', here a million): refused by libxml2's amplification
    limit (not by huge_tree=False, which does not lift it), as a finding and not as 30 MB of 'lol'."""
    levels = ['<!ENTITY l0 "lollollollollollollollollollol">'] + [
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 7)]
    bomb = f'<!DOCTYPE domain [{"".join(levels)}]><domain type="kvm" id="&l6;"><name>x</name></domain>'
    findings = domxml.check(bomb.encode())
    assert [f.rule_id for f in findings] == ["xml.well_formed"] and "amplification" in findings[0].message
