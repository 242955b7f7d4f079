"""snpvirt's element under a domain's <metadata>: read it back, add it to imported XML, diff specs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from snpvirt import __version__
from snpvirt.domain.xml import METADATA_NS

_NS = {"s": METADATA_NS}


@dataclass(frozen=True)
class ManagedInfo:
    """What snpvirt recorded in a domain it manages."""

    version: str
    origin: str  # "spec" | "import"
    spec: dict[str, Any] | None
    digest: str | None  # "sha256:..." of the spec JSON (or of the imported XML)
    launch: dict[str, Any] = field(default_factory=dict)
    defined_at: str | None = None
    updated_at: str | None = None
    xml_digest: str | None = None  # of the document `define XML` was given, without snpvirt's element
    seed: dict[str, str] | None = None  # the cloud-init seed volume (pool, volume, sha256): not a launch input
    fleet: str | None = None  # the fleet that owns it (`snpvirt fleet`); None: managed host by host


def find(root: etree._Element) -> etree._Element | None:
    return root.find(f"metadata/{{{METADATA_NS}}}domain")


def read(root: etree._Element) -> ManagedInfo | None:
    element = find(root)
    if element is None:
        return None
    spec_el = element.find("s:spec", _NS)
    spec = None
    if spec_el is not None and spec_el.get("format") == "json" and spec_el.text:
        try:
            spec = json.loads(spec_el.text)
        except (ValueError, RecursionError):  # edited into anything, nested past the recursion limit
            spec = None
        spec = spec if isinstance(spec, dict) else None
    launch: dict[str, Any] = {}
    launch_el = element.find("s:launch", _NS)
    # Elements only: a comment or processing instruction (virsh edit keeps them) has no tag name.
    for child in launch_el.iterchildren(tag=etree.Element) if launch_el is not None else ():
        tag = etree.QName(child).localname
        launch[tag] = dict(child.attrib) if len(child.attrib) else child.text
    times = element.find("s:timestamps", _NS)
    seed = element.find("s:seed", _NS)
    return ManagedInfo(
        version=element.get("version", ""),
        origin=element.get("origin", "spec"),
        spec=spec,
        digest=spec_el.get("digest") if spec_el is not None else element.get("digest"),
        launch=launch,
        defined_at=times.get("defined") if times is not None else None,
        updated_at=times.get("updated") if times is not None else None,
        xml_digest=element.get("xml_digest"),
        seed=dict(seed.attrib) if seed is not None else None,
        fleet=element.get("fleet"),
    )


def add_import_record(root: etree._Element, original_xml: bytes, now: str) -> None:
    """Mark an imported domain as managed: its origin, the digest of the XML it came from, the time."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.Element("metadata")
        name = root.find("name")
        # libvirt accepts any order; after <name>/<uuid> is where it writes <metadata> itself.
        anchor = root.find("uuid") if root.find("uuid") is not None else name
        anchor.addnext(metadata) if anchor is not None else root.insert(0, metadata)
    old = find(root)
    if old is not None:
        metadata.remove(old)
    element = etree.SubElement(metadata, f"{{{METADATA_NS}}}domain", nsmap={"snpvirt": METADATA_NS})
    element.set("version", __version__)
    element.set("origin", "import")
    element.set("digest", "sha256:" + hashlib.sha256(original_xml).hexdigest())
    etree.SubElement(element, f"{{{METADATA_NS}}}timestamps", defined=now, updated=now)


def spec_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """Changed keys between two specs, dotted (`snp.policy.smt`), with their old and new values."""
    before, after = _flatten(old or {}), _flatten(new)
    return [{"key": k, "from": before.get(k), "to": after.get(k)}
            for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


# Launch attributes that are counts or sizes: XML keeps them as text, scripts read them as numbers.
_NUMERIC_ATTRIBUTES = ("count", "size")


def typed_launch(launch: dict[str, Any]) -> dict[str, Any]:
    """The launch inputs as `status` shows them: counts and sizes as numbers (`vcpus.count` 4, not "4").
    Comparisons keep the text as read (they compare it with the definition's text)."""
    def typed(attrs: Any) -> Any:
        if not isinstance(attrs, dict):
            return attrs
        return {key: int(value) if key in _NUMERIC_ATTRIBUTES and isinstance(value, str) and value.isascii()
                and value.isdigit() else value for key, value in attrs.items()}

    return {tag: typed(value) for tag, value in launch.items()}


LAUNCH_INPUTS = ("firmware", "kernel", "initrd", "cmdline", "vcpus", "policy")


def with_launch_inputs(element: etree._Element, inputs: dict[str, Any]) -> etree._Element:
    """A copy of snpvirt's element whose launch inputs are `inputs` (tag -> attributes, or text), in the
    order a spec's domain records them; None values are left out. For an imported domain, which has none
    until its measurement is recorded."""
    import copy

    element = copy.deepcopy(element)
    launch = element.find("s:launch", _NS)
    if launch is None:
        launch = etree.SubElement(element, f"{{{METADATA_NS}}}launch")
    for old in [child for child in launch if etree.QName(child).localname in LAUNCH_INPUTS]:
        launch.remove(old)
    for position, (tag, value) in enumerate((t, inputs[t]) for t in LAUNCH_INPUTS if inputs.get(t) is not None):
        child = etree.Element(f"{{{METADATA_NS}}}{tag}")
        if isinstance(value, dict):
            for key, item in value.items():
                if item is not None:
                    child.set(key, str(item))
        else:
            child.text = str(value)
        launch.insert(position, child)
    return element


def with_measurement(element: etree._Element, expected: Any) -> etree._Element:
    """A copy of snpvirt's element whose launch inputs carry this expected measurement."""
    import copy

    element = copy.deepcopy(element)
    launch = element.find("s:launch", _NS)
    if launch is None:
        launch = etree.SubElement(element, f"{{{METADATA_NS}}}launch")
    old = launch.find("s:measurement", _NS)
    if old is not None:
        launch.remove(old)
    attrs = {"value": expected.value, "vcpu_signature": f"{expected.vcpu_signature:#x}",
             "guest_features": f"{expected.guest_features:#x}", "source": "recorded from local copies"}
    etree.SubElement(launch, f"{{{METADATA_NS}}}measurement", attrs)
    return element


def without_namespace(element: etree._Element) -> str:
    """The element as virDomainSetMetadata takes it: plain names, libvirt adds snpvirt's namespace itself."""
    import copy

    plain = copy.deepcopy(element)
    for node in plain.iter():
        node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(plain)
    return etree.tostring(plain, encoding="unicode")


def content_digest(root: etree._Element) -> str:
    """SHA-256 of a domain document's canonical form without snpvirt's own element: what `define XML`
    compares, so an edited document is an update and the same document again is unchanged."""
    import copy

    plain = copy.deepcopy(root)
    element = find(plain)
    if element is not None:
        element.getparent().remove(element)
    return "sha256:" + hashlib.sha256(etree.tostring(plain, method="c14n")).hexdigest()
