"""The lifecycle part of scripts/demo: apply, list, status, stop, undefine, on libvirt's test driver.

libvirt's test:///default lives inside one process, so the demo starts a private libvirtd (the same
isolated daemon the tests use) and points each `snpvirt` command at its test driver. Every command
must succeed: a failure, or a daemon that cannot start here, ends the demo with exit 1.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class StepFailed(Exception):
    """A demo step that did not do what the demo shows."""


def snpvirt(*args: str, uri: str) -> None:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"$ snpvirt {shown} -c test+unix:///default?socket=…")
    sys.stdout.flush()
    code = subprocess.run([sys.executable, "-m", "snpvirt", *args, "-c", uri], cwd=ROOT).returncode
    if code:
        raise StepFailed(f"snpvirt {shown} exited {code}")


def no_private_libvirtd() -> bool:
    """True, after saying why, when a private libvirtd cannot run here (the demo's steps that need one)."""
    from tests.integration.daemon import libvirtd_available

    reason = libvirtd_available()
    if reason:
        print(f"demo: error: a private libvirtd cannot run here: {reason}", file=sys.stderr)
        print("hint: this step needs root, libvirtd and unshare (scripts/setup installs libvirt)", file=sys.stderr)
    return reason is not None


def main() -> int:
    import libvirt

    from tests.integration.daemon import IsolatedLibvirtd

    if no_private_libvirtd():
        return 1
    with tempfile.TemporaryDirectory(prefix="snpvirt-demo-") as tmp, IsolatedLibvirtd(Path(tmp) / "d") as daemon:
        uri = daemon.test_uri
        held = libvirt.open(uri)  # the daemon's test driver keeps its state while a client is connected
        try:
            snpvirt("apply", "examples/web-01.toml", "--check", uri=uri)
            snpvirt("apply", "examples/web-01.toml", uri=uri)
            snpvirt("apply", "examples/web-01.toml", "--check", uri=uri)
            snpvirt("list", uri=uri)
            snpvirt("status", "web-01", uri=uri)
            snpvirt("apply", "examples/web-01.toml", "--json", uri=uri)
            snpvirt("stop", "web-01", uri=uri)
            snpvirt("undefine", "web-01", uri=uri)
        except StepFailed as failed:
            print(f"demo: error: {failed}", file=sys.stderr)
            return 1
        finally:
            held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
