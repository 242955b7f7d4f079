"""The fleet part of scripts/demo: three private libvirtd "hosts", one desired state over them.

Each host is an isolated libvirtd (the daemon the tests use) with its test driver; a connection to each
is held open so the test driver keeps its state. The test driver reports no SEV-SNP capacity, so the
fleet file gives each host two slots (`snp_guests`), as an operator does for a host whose libvirt
under-reports. Every command must succeed: a failure ends the demo with exit 1.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_lifecycle import StepFailed, no_private_libvirtd  # noqa: E402  (scripts/ is this script's folder)

SPEC = """\
name = "web"
memory_mib = 512
vcpus = 1
firmware = "/usr/share/ovmf/OVMF.amdsev.fd"

[snp]
cbitpos = 51
reduced_phys_bits = 1
"""


def fleet_file(uris: dict[str, str], racks: dict[str, str]) -> str:
    text = '[fleet]\nname = "demo"\nconnect_timeout_s = 5\n\n'
    for name, uri in uris.items():
        text += f'[[hosts]]\nname = "{name}"\nuri = "{uri}"\nlabels = {{ rack = "{racks[name]}" }}\nsnp_guests = 2\n\n'
    return text + '[[domains]]\nspec = "web.toml"\ncount = 4\n\n[[domains]]\nspec = "batch.toml"\nhost = "h3"\n'


def run(*args: str, shown: str) -> None:
    print(f"$ snpvirt {shown}")
    sys.stdout.flush()
    code = subprocess.run([sys.executable, "-m", "snpvirt", *args], cwd=ROOT, timeout=300).returncode
    if code:
        raise StepFailed(f"snpvirt {shown} exited {code}")


def main() -> int:
    import libvirt

    from tests.integration.daemon import IsolatedLibvirtd

    if no_private_libvirtd():
        return 1
    with tempfile.TemporaryDirectory(prefix="snpvirt-demo-fleet-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        uris = {}
        for name in ("h1", "h2", "h3"):
            daemon = stack.enter_context(IsolatedLibvirtd(work / name))
            uris[name] = daemon.test_uri
            stack.callback(libvirt.open(daemon.test_uri).close)  # held: the test driver keeps its state
        (work / "web.toml").write_text(SPEC)
        (work / "batch.toml").write_text(SPEC.replace('name = "web"', 'name = "batch"'))
        fleet = work / "fleet.toml"
        fleet.write_text(fleet_file(uris, {"h1": "r1", "h2": "r2", "h3": "r2"}))
        print("# fleet.toml: hosts h1 (rack r1), h2 and h3 (rack r2), two SNP slots each; web x4, batch pinned to h3")
        try:
            run("fleet", "check", str(fleet), shown="fleet check fleet.toml")
            run("fleet", "plan", str(fleet), "-o", str(work / "plan.json"), shown="fleet plan fleet.toml -o plan.json")
            run("fleet", "apply", str(fleet), "--plan", str(work / "plan.json"), shown="fleet apply fleet.toml --plan plan.json")
            run("fleet", "list", str(fleet), shown="fleet list fleet.toml")
            print("# a second plan changes nothing: the hosts hold the desired state")
            run("fleet", "plan", str(fleet), shown="fleet plan fleet.toml")
        except (StepFailed, subprocess.TimeoutExpired) as failed:
            print(f"demo: error: {failed}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
