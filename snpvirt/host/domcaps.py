"""Read the SEV facts out of a `virsh domcapabilities` document."""

from __future__ import annotations

from lxml import etree

from snpvirt.errors import BadInputError
from snpvirt.models import HostSevCaps


def _int(node: etree._Element, tag: str) -> int | None:
    text = (node.findtext(tag) or "").strip()
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    return int(text) if text.isascii() and text.isdigit() else None


def parse_domcaps(xml: str | bytes, origin: str = "domain capabilities") -> HostSevCaps:
    try:
        root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadInputError(f"{origin}: not well-formed XML: {exc}", "save it again with: virsh domcapabilities > domcaps.xml") from None
    if root.tag != "domainCapabilities":
        raise BadInputError(f"{origin}: root element is <{root.tag}>, expected <domainCapabilities>",
                            "save it with: virsh domcapabilities > domcaps.xml (not virsh capabilities)")
    sev = root.find("features/sev")
    sectypes = root.xpath("features/launchSecurity[@supported='yes']/enum[@name='sectype']/value/text()")
    if sev is None or sev.get("supported") != "yes":
        return HostSevCaps(sev_supported=False, snp_advertised="sev-snp" in sectypes)
    return HostSevCaps(
        sev_supported=True,
        snp_advertised="sev-snp" in sectypes,
        cbitpos=_int(sev, "cbitpos"),
        reduced_phys_bits=_int(sev, "reducedPhysBits"),
        max_guests=_int(sev, "maxGuests"),
        max_es_guests=_int(sev, "maxESGuests"),
    )


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
