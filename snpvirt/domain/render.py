"""VmSpec -> libvirt domain XML through the Jinja2 templates, then checked like any user's XML."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from pathlib import Path

import jinja2
import markupsafe
from lxml import etree

from snpvirt import __version__
from snpvirt.domain import xml as domxml
from snpvirt import policy as snp_policy
from snpvirt.errors import BadInputError
from snpvirt.launch.inputs import LaunchRecord
from snpvirt.models import Finding, RenderResult, Stamp, VmSpec
from snpvirt.domain.sevparams import SevParams

DOMAIN_TEMPLATE = "domain.xml.j2"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # snpvirt/, above domain/


def template_dir() -> Path:
    """Inside an installed wheel templates/ sits in the package; in a checkout, beside it."""
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates"):
        if (candidate / DOMAIN_TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"snpvirt templates not found next to {_PACKAGE_DIR}")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # the templates ship with the package: no stat of the file on every render
    )
    # Filters, not globals: a filter is a plain call in the compiled template, a global goes through
    # Context.call (a render runs per domain in bulk applies).
    env.filters["yes_no"] = lambda flag: "yes" if flag else "no"
    env.filters["hex"] = lambda number: f"{number:#x}"
    env.filters["xml_text"] = _xml_text
    env.filters["file_digest"] = _file_digest
    return env


_compiling = threading.Lock()


@functools.cache
def _template() -> jinja2.Template:
    """The domain template, compiled once per process. Under the lock: a fleet's hosts start rendering at
    the same moment, and Jinja2's own cache lets each of them compile it (a tenth of a second each)."""
    with _compiling:
        return _environment().get_template(DOMAIN_TEMPLATE)


def _file_digest(stamp: Stamp | None, kind: str) -> markupsafe.Markup:
    """ sha256='…' (and reason='…' when unknown) of a launch file's metadata element; nothing without a
    stamp. A Python function, not a template macro: a Jinja2 macro call cost a tenth of a render."""
    if stamp is None:
        return markupsafe.Markup()
    digest = stamp.digests[kind]
    escape = markupsafe.escape
    reason = f" reason='{escape(digest.reason)}'" if digest.reason else ""
    return markupsafe.Markup(f" sha256='{escape(digest.sha256 or 'unknown')}'{reason}")


def _xml_text(value: str) -> markupsafe.Markup:
    """Escape for element text only (&, <, >), so JSON quotes stay readable in the metadata."""
    return markupsafe.Markup(value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def spec_json(spec: VmSpec) -> str:
    """Canonical JSON of the spec as written: its digest tells whether a domain's spec changed."""
    return json.dumps(spec.source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def render_xml(spec: VmSpec, sev: SevParams, stamp: Stamp | None = None, launch: LaunchRecord | None = None,
               seed_sha256: str | None = None) -> str:
    unresolved = spec.boot.unresolved
    if unresolved:  # only the host knows a pool volume's path, and <kernel>/<initrd> take a path
        ref = getattr(spec.boot, f"{unresolved[0]}_volume")
        raise BadInputError(f"boot.{unresolved[0]} is volume {ref.volume!r} in pool {ref.pool!r}: its path on the host is not known",
                            "give --connect URI (the host that holds the pool), or name the file by path")
    text = spec_json(spec)
    return _template().render(
        spec=spec,
        namespace=domxml.METADATA_NS,
        version=__version__,
        template=DOMAIN_TEMPLATE,
        spec_json=text,
        spec_digest=hashlib.sha256(text.encode()).hexdigest(),
        policy_hex=snp_policy.to_hex(spec.snp.policy),
        cbitpos=sev.cbitpos,
        reduced_phys_bits=sev.reduced_phys_bits,
        stamp=stamp,
        launch=launch,
        seed_sha256=seed_sha256,
    )


def render(spec: VmSpec, sev: SevParams, allow_debug: bool = False, stamp: Stamp | None = None,
           launch: LaunchRecord | None = None, seed_sha256: str | None = None) -> RenderResult:
    """Render and check; a document that breaks the schema or an SNP rule is never returned.

    `launch` (launch.record: expected measurement, ID blocks) and `stamp` (digests, times) come from
    the caller, which reads the files; without them the metadata holds the spec alone. `seed_sha256` is the
    digest of the cloud-init seed (image/seed.py), recorded beside, not in, the launch inputs. What `render`
    shows (or writes) is checked against libvirt's schema too: once per document, cheap beside a person.
    """
    xml = render_xml(spec, sev, stamp, launch, seed_sha256)
    findings, _ = check_rendered(spec.name, xml, allow_debug, schema=True)
    return RenderResult(
        name=spec.name,
        xml=xml,
        policy=spec.snp.policy,
        cbitpos=sev.cbitpos,
        reduced_phys_bits=sev.reduced_phys_bits,
        sev_params_source=sev.source,
        warnings=sev.warnings + tuple(findings),
    )


def check_rendered(name: str, xml: str, allow_debug: bool = False,
                   schema: bool = False) -> tuple[list[Finding], etree._Element]:
    """The checks every document rendered from a spec passes before it is defined: well-formed, and every
    SNP rule (domain/rules.py). Raises BadInputError on the first error; returns the findings (warnings) and
    the parsed root, which the manager compares libvirt's copy with after a define.

    libvirt's RNG schema is not run here by default (it was a quarter of apply's CPU per domain): the spec
    checks (domain/spec.py, domain/sevparams.py) admit only values the template renders into schema-valid
    XML, which tests/unit/test_properties.py proves over generated specs, hostile values included. XML that
    users bring (define, import, validate) is always checked against the schema (domain/xml.py check)."""
    findings, root = domxml.check_document(xml, allow_debug=allow_debug, schema=schema)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        first = errors[0]
        raise BadInputError(f"{name}: rendered XML breaks rule {first.rule_id}: {first.message}", first.hint)
    return findings, root
