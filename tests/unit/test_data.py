"""The test data in tests/data: every file accounted for in its README, derived files re-derived, nothing outside."""

from __future__ import annotations

import hashlib
import json
import re

from tests.conftest import ROOT, VECTORS, vector


def test_every_data_file_is_listed_in_the_readme():
    """The README gives each file's source and licence: a file added without a line there fails."""
    listed = set(re.findall(r"`([\w./+-]+\.\w+)`", (VECTORS / "README.md").read_text()))
    files = {str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*") if p.is_file() and p.name != "README.md"}
    assert files - listed == set()


def test_the_derived_reports_are_cut_from_their_sources_as_the_readme_says():
    hex_text = vector("attestation/virtee-sev/report_milan.hex").read_text()
    assert vector("attestation/derived/virtee_report_milan.bin").read_bytes() == bytes.fromhex(hex_text.strip())
    hcl = vector("attestation/trustee-azure/hcl-report.bin").read_bytes()
    assert vector("attestation/derived/azure_milan_report.bin").read_bytes() == hcl[32:1216]
    evidence = json.loads(vector("attestation/trustee-azure/evidence-genoa.json").read_text())
    assert vector("attestation/derived/azure_genoa_report.bin").read_bytes() == bytes(evidence["report"])[32:1216]
    e2e = json.loads(vector("attestation/trustee/e2e-evidence.json").read_text())
    assert vector("attestation/derived/trustee_e2e_genoa_vcek.der").read_bytes() == bytes(e2e["cert_chain"][0]["data"])


def test_the_generated_measurement_inputs_are_what_the_readme_says():
    assert vector("measurement/derived-inputs/kernel.bin").read_bytes() == bytes(range(256)) * 16
    assert vector("measurement/derived-inputs/initrd.bin").read_bytes() == b"initrd-test-data\n" * 64
    extra = json.loads(vector("measurement/extra-vectors.json").read_text())
    assert extra["kernel"]["sha256"] == hashlib.sha256(b"K" * 4096).hexdigest()
    assert extra["initrd"]["sha256"] == hashlib.sha256(b"I" * 1000).hexdigest()


def test_nothing_reads_data_from_outside_the_repository():
    """A clone with nothing beside it must run everything: no path into a sibling folder of the checkout."""
    sibling = ".." + "/shared"  # split so this file does not match itself
    parent_join = 'parent / "' + 'shared"'
    folders = ("snpvirt", "scripts", "tests", "docs", "templates", "examples", ".ci")
    texts = [p for top in folders for p in (ROOT / top).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and VECTORS not in p.parents]
    texts += [ROOT / "README.md", ROOT / "pyproject.toml"]
    offenders = [str(p.relative_to(ROOT)) for p in texts
                 if sibling in (text := p.read_text(errors="replace")) or parent_join in text]
    assert offenders == []
