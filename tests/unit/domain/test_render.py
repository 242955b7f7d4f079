"""Rendering: golden documents, libvirt's schema, host-capability sources, escaping."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from snpvirt.host import domcaps
from snpvirt.domain import render, sevparams
from snpvirt.domain import xml as domxml
from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError, HostNotReadyError
from snpvirt.models import HostSevCaps
from tests.conftest import EXAMPLES, GENOA_DOMCAPS, GOLDEN, ROOT, run_cli, vector

MINIMAL = {"name": "vm1", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
           "snp": {"cbitpos": 51, "reduced_phys_bits": 1}}


def render_raw(raw, sources=()):
    vm = specs.parse_spec(raw)
    return render.render(vm, sevparams.resolve(vm, list(sources)))


def golden_cases():
    """(example, golden file, render options): db-01 takes its cbitpos from the Genoa domcaps."""
    return [("web-01.toml", "web-01.xml", ()), ("db-01.toml", "db-01.xml", ("--host-caps", GENOA_DOMCAPS))]


def render_example(example, options):
    """`snpvirt render` as a user runs it, on a machine without the example's launch files (what the goldens
    record), whichever of those files this machine has."""
    options = [str(vector(o)) if o == GENOA_DOMCAPS else o for o in options]
    result = run_cli("render", EXAMPLES / example, *options, bare=True)
    assert result.code == 0, result.stderr
    # Only warnings that the example's paths are not on this machine (tests/unit/test_conventions.py).
    assert all(line.startswith(("snpvirt: warning: ", "hint: ")) and ("does not exist on this machine" in line
               or line.startswith("hint: ")) for line in result.stderr.splitlines()), result.stderr
    return result.stdout


@pytest.mark.parametrize("example,golden,options", golden_cases())
def test_examples_match_their_goldens(example, golden, options):
    xml = render_example(example, options)
    path = GOLDEN / golden
    if xml != path.read_text() and os.environ.get("SNPVIRT_UPDATE_GOLDEN"):
        path.write_text(xml)
        pytest.fail(f"SNPVIRT_UPDATE_GOLDEN: rewrote {path}; review `git diff {path.relative_to(ROOT)}`, "
                    "then run the tests again without SNPVIRT_UPDATE_GOLDEN", pytrace=False)
    assert xml == path.read_text(), f"re-run with SNPVIRT_UPDATE_GOLDEN=1 if the change to {golden} is intended"
    assert [f for f in domxml.check(xml) if f.severity == "error"] == []


def test_web01_golden_carries_every_snp_element():
    root = etree.fromstring((GOLDEN / "web-01.xml").read_bytes())
    assert root.get("type") == "kvm"
    assert root.find("os/type").get("machine") == "q35"
    loader = root.find("os/loader")
    assert (loader.get("type"), loader.get("stateless"), loader.text) == ("rom", "yes", "/usr/share/ovmf/OVMF.amdsev.fd")
    assert root.find("os/nvram") is None and root.find("features/smm").get("state") == "off"
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    snp = root.find("launchSecurity")
    assert (snp.get("type"), snp.get("kernelHashes")) == ("sev-snp", "yes")
    assert (snp.findtext("cbitpos"), snp.findtext("reducedPhysBits"), snp.findtext("policy")) == ("51", "1", "0x30000")
    assert all(d.get("iommu") == "on" for d in root.iterfind("devices/*/driver"))
    meta = root.find(f"metadata/{{{domxml.METADATA_NS}}}domain")
    spec_el = meta.find(f"{{{domxml.METADATA_NS}}}spec")
    import hashlib
    assert spec_el.get("digest") == "sha256:" + hashlib.sha256(spec_el.text.encode()).hexdigest()


def test_host_caps_from_the_genoa_domcaps_vector():
    caps = domcaps.parse_domcaps(vector(GENOA_DOMCAPS).read_bytes())
    assert (caps.sev_supported, caps.snp_advertised, caps.cbitpos, caps.reduced_phys_bits,
            caps.max_guests, caps.max_es_guests) == (True, True, 51, 1, 59, 450)


def test_old_domcaps_without_snp_enum_render_with_a_warning():
    caps = domcaps.parse_domcaps(vector("virt-manager/kvm-x86_64-domcaps-amd-sev.xml").read_bytes())
    assert caps.sev_supported and not caps.snp_advertised
    raw = {k: v for k, v in MINIMAL.items() if k != "snp"}
    result = render_raw(raw, [sevparams.HostCapsSource(caps, "old host")])
    assert result.cbitpos == 51 and [w.rule_id for w in result.warnings] == ["host.snp_not_advertised"]


def test_host_without_sev_is_an_error_not_a_guess():
    caps = domcaps.parse_domcaps(vector("virt-manager/kvm-x86_64-domcaps-latest.xml").read_bytes())
    assert not caps.sev_supported
    raw = {k: v for k, v in MINIMAL.items() if k != "snp"}
    with pytest.raises(HostNotReadyError, match="SEV is not supported"):
        render_raw(raw, [sevparams.HostCapsSource(caps, "plain host")])


def test_missing_cbitpos_source_says_how_to_get_it():
    with pytest.raises(BadInputError, match="snp.cbitpos is not known") as info:
        render_raw({k: v for k, v in MINIMAL.items() if k != "snp"})
    assert "--host-caps" in info.value.hint and "--connect" in info.value.hint


def test_spec_values_win_over_host_caps():
    caps = domcaps.parse_domcaps(vector(GENOA_DOMCAPS).read_bytes())
    raw = {**MINIMAL, "snp": {"cbitpos": 47}}
    result = render_raw(raw, [sevparams.HostCapsSource(caps, "genoa")])
    assert (result.cbitpos, result.reduced_phys_bits, result.sev_params_source) == (47, 1, "genoa + spec")


@pytest.mark.parametrize("cbitpos,reduced,bad", [(0, 1, "cbitpos 0"), (64, 1, "cbitpos 64"), (51, 64, "reducedPhysBits 64"),
                                                  (2**40, 1, "cbitpos 1099511627776"), (51, 2**70, "reducedPhysBits a 71-bit number")])
def test_host_values_out_of_range_are_refused(cbitpos, reduced, bad):
    """A domcapabilities file (--host-caps) or host is held to the spec's bounds: apply defines the rendered
    XML without libvirt's schema, whose unsignedInt would refuse 2**40."""
    caps = HostSevCaps(sev_supported=True, snp_advertised=True, cbitpos=cbitpos, reduced_phys_bits=reduced)
    raw = {k: v for k, v in MINIMAL.items() if k != "snp"}
    with pytest.raises(BadInputError, match=f"caps.xml: {bad} is out of range") as info:
        render_raw(raw, [sevparams.HostCapsSource(caps, "--host-caps caps.xml")])
    assert "snp." in info.value.hint


def test_domcaps_errors():
    with pytest.raises(BadInputError, match="not well-formed"):
        domcaps.parse_domcaps(b"<domainCapabilities>")
    with pytest.raises(BadInputError, match="expected <domainCapabilities>"):
        domcaps.parse_domcaps(b"<capabilities/>")


def test_values_are_escaped_never_break_the_xml():
    raw = {**MINIMAL, "description": "a <b> & \"c\" ]]> 'd'",
           "boot": {"kernel": "/k<&>'\"", "cmdline": "x=<y> & z='1' \"q\""}}
    result = render_raw(raw)
    root = etree.fromstring(result.xml.encode())
    assert root.findtext("description") == raw["description"]
    assert root.findtext("os/cmdline") == raw["boot"]["cmdline"]
    assert root.findtext("os/kernel") == raw["boot"]["kernel"]


def test_templates_are_found_from_the_checkout():
    assert (render.template_dir() / render.DOMAIN_TEMPLATE).is_file()
    assert render.template_dir() == Path(__file__).resolve().parents[3] / "templates"


# Runs in a private mount namespace: an overlay (upper layer on a private tmpfs) over the nearest existing
# folder of each launch file, so the files can be created without touching the machine; then the command.
_PLANT_LAUNCH_FILES = """\
set -eu
T="$1"; shift
mount -t tmpfs -o mode=0700 snpvirt-plant "$T"
i=0
while [ "$1" != "--" ]; do
  i=$((i + 1)); mkdir "$T/up$i" "$T/work$i"
  mount -t overlay snpvirt-plant -o "lowerdir=$1,upperdir=$T/up$i,workdir=$T/work$i" "$1"; shift
done
shift
while [ "$1" != "--" ]; do mkdir -p "$(dirname "$1")"; echo "planted launch file" > "$1"; shift; done
shift
exec "$@"
"""

_RENDER_BOTH_WAYS = """\
import json, sys
from tests.conftest import EXAMPLES, run_cli
plain = run_cli("render", EXAMPLES / "web-01.toml")
bare = run_cli("render", EXAMPLES / "web-01.toml", bare=True)
print(json.dumps({"plain": plain.stdout, "bare": bare.stdout, "stderr": plain.stderr + bare.stderr}))
"""


def _outermost(folders):
    """The folders, without those inside another one (one overlay covers them)."""
    return sorted(f for f in folders if not any(f != o and f.is_relative_to(o) for o in folders))


def test_goldens_hold_on_a_machine_that_has_the_launch_files(tmp_path):
    """An SNP host has /usr/share/ovmf/OVMF.amdsev.fd: the golden renders must not depend on that."""
    from tests.conftest import _private_mount_namespace, example_launch_files

    prefix = _private_mount_namespace()
    if prefix is None:
        pytest.skip("no private mount namespace here (needs root or unprivileged user namespaces)")
    files = [Path(p) for p in example_launch_files()]
    folders = set()
    for file in files:
        folder = file.parent
        while not folder.is_dir():
            folder = folder.parent
        folders.add(folder)
    (tmp_path / "t").mkdir()
    argv = [*prefix, "sh", "-c", _PLANT_LAUNCH_FILES, "sh", str(tmp_path / "t"), *map(str, _outermost(folders)), "--",
            *map(str, files), "--", sys.executable, "-c", _RENDER_BOTH_WAYS]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    golden = (GOLDEN / "web-01.xml").read_text()
    assert seen["plain"] != golden, "a plain render sees the planted files (else this test proves nothing)"
    assert seen["bare"] == golden, seen["stderr"]
