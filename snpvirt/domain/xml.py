"""Check a libvirt domain document: well-formed, valid against libvirt's own RNG schema, SNP rules."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lxml import etree

from snpvirt.errors import SnpvirtError
from snpvirt.models import Finding
from snpvirt.domain.rules import check_rules

# snpvirt's element under <metadata>. Chosen once; never change it (domains carry it for life).
METADATA_NS = "https://snpvirt.dev/xmlns/domain/1"
SCHEMA_DIRS = ("/usr/share/libvirt/schemas", "/usr/local/share/libvirt/schemas")

# No entity expansion, no network: the XML may come from anyone.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def schema_path() -> Path:
    candidates = [os.environ["SNPVIRT_LIBVIRT_SCHEMA_DIR"]] if os.environ.get("SNPVIRT_LIBVIRT_SCHEMA_DIR") else []
    for directory in (*candidates, *SCHEMA_DIRS):
        path = Path(directory) / "domain.rng"
        if path.is_file():
            return path
    raise SnpvirtError(
        "libvirt's domain schema (domain.rng) is not installed, so XML cannot be validated",
        "install libvirt's schemas (Debian/Ubuntu: apt install libvirt-common; Fedora: libvirt-libs), "
        "or set SNPVIRT_LIBVIRT_SCHEMA_DIR",
    )


@functools.cache
def _schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(schema_path())))


def parse(xml: str | bytes) -> etree._Element:
    """Parse domain XML; raises etree.XMLSyntaxError."""
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)


def schema_findings(root: etree._Element) -> list[Finding]:
    schema = _schema()
    if schema.validate(root):
        return []
    return [
        Finding("libvirt.schema", "error", f"line {e.line}: {e.message}",
                "fix the element to match libvirt's domain schema (virt-xml-validate shows the same)")
        for e in schema.error_log
    ][:5]


def check(xml: str | bytes, allow_debug: bool = False) -> list[Finding]:
    """All findings for one document: well-formedness, libvirt's schema, SNP rules."""
    return check_document(xml, allow_debug)[0]


def check_document(xml: str | bytes, allow_debug: bool = False,
                   schema: bool = True) -> tuple[list[Finding], etree._Element | None]:
    """check(), and the parsed document for a caller that goes on with it (None when not well-formed).
    `schema=False` only for documents rendered from a checked spec (render.check_rendered says why)."""
    try:
        root = parse(xml)
    except etree.XMLSyntaxError as exc:
        return [Finding("xml.well_formed", "error", f"not well-formed XML: {exc}", "fix the XML syntax at that line")], None
    if root.tag != "domain":
        return [Finding("xml.domain", "error", f"root element is <{root.tag}>, not <domain>",
                        "give a libvirt domain document, e.g. from: virsh dumpxml NAME")], root
    return (schema_findings(root) if schema else []) + check_rules(root, allow_debug), root
