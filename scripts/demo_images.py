"""The image part of scripts/demo: Ubuntu's SEV-SNP path (a cloud image, its kernel, a user with an SSH key) with
snpvirt, end to end on this machine, with no network and no SEV hardware.

Stand-ins, all started here and gone afterwards: a fake Ubuntu cloud-images mirror on loopback
(tests/image_mirror.py: a tiny real qcow2, a kernel and an initrd, SHA256SUMS signed by a throwaway OpenPGP key
made here), and a private libvirtd (the isolated daemon the tests use) as the host: its QEMU driver's storage
takes the volumes, its test driver the domain. Every command must succeed: a failure, or a daemon that cannot
start here, ends the demo with exit 1. snpvirt's image cache is a folder of the demo's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = "examples/ubuntu-cloud.toml"

from demo_lifecycle import StepFailed, no_private_libvirtd  # noqa: E402  (scripts/ is this script's folder)


class Shell:
    """Runs the demo's commands and shows each as a user would type it (long, private values shortened)."""

    def __init__(self, env: dict[str, str], shown: dict[str, str]) -> None:
        self.env, self.shown = env, shown

    def run(self, *argv: str) -> None:
        text = " ".join(_quote(self._short(a)) for a in argv)
        print(f"$ {text}")
        sys.stdout.flush()
        command = [sys.executable, "-m", "snpvirt", *argv[1:]] if argv[0] == "snpvirt" else list(argv)
        code = subprocess.run(command, cwd=ROOT, env=self.env, timeout=300).returncode
        if code:
            raise StepFailed(f"{text} exited {code}")

    def _short(self, arg: str) -> str:
        for value, short in self.shown.items():
            arg = arg.replace(value, short)
        return arg


def _quote(arg: str) -> str:
    if not any(c in arg for c in " ?[]'\"$`\\"):
        return arg
    if "'" in arg and not any(c in arg for c in '"$`\\'):
        return f'"{arg}"'
    return "'" + arg.replace("'", "'\\''") + "'"


def comment(*lines: str) -> None:
    print("\n" + "\n".join(f"# {line}" for line in lines))


def main() -> int:
    from tests.image_mirror import build_tree, serve, signer
    from tests.integration.daemon import IsolatedLibvirtd
    from tests.sshkeys import public_key

    if no_private_libvirtd():
        return 1
    for tool in ("gpg", "gpgv", "qemu-img", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(f"demo: error: {tool} is not installed", file=sys.stderr)
            print("hint: run scripts/setup", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="snpvirt-demo-img-") as work, signer("snpvirt demo mirror") as key:
        work = Path(work)
        keyring = work / "demo-mirror-keyring.gpg"
        shutil.copyfile(key.keyring, keyring)
        ssh_key = public_key(work, comment="demo@snpvirt")  # a throwaway pair: the private half stays in `work`
        with serve(work / "mirror", build_tree(work / "mirror", key)) as mirror, \
                IsolatedLibvirtd(work / "d") as daemon:
            env = {**os.environ, "SNPVIRT_CACHE_DIR": str(work / "cache")}
            shown = {daemon.qemu_uri: "qemu+unix:///system?socket=…", daemon.test_uri: "test+unix:///default?socket=…",
                     str(keyring): keyring.name, ssh_key: ssh_key[:24] + "… demo@snpvirt"}
            try:
                steps(Shell(env, shown), mirror.url, keyring, ssh_key, daemon)
            except (StepFailed, subprocess.TimeoutExpired) as failed:
                print(f"demo: error: {failed}", file=sys.stderr)
                return 1
    return 0


def steps(sh: Shell, mirror_url: str, keyring: Path, ssh_key: str, daemon) -> None:
    import libvirt

    host, hv = daemon.qemu_uri, daemon.test_uri
    held = libvirt.open(hv)  # the daemon's test driver keeps its state while a client is connected
    try:
        comment(f"A local mirror with Ubuntu's layout at {mirror_url}, its SHA256SUMS signed by a throwaway key")
        pull = ("snpvirt", "image", "pull", "ubuntu:24.04", "--mirror", mirror_url, "--keyring", str(keyring), "-c", host)
        sh.run(*pull)
        comment("Pulling again downloads and uploads nothing: the pool's manifest matches the signed list")
        sh.run(*pull)
        sh.run("snpvirt", "image", "list", "-c", host)

        comment(f"{SPEC}: a pool disk (overlay on the image), kernel and initrd from the pool, cloud-init with a user",
                "and the demo's throwaway SSH key. Domains go to the daemon's test driver (no SEV hardware here), whose",
                "simulated pools take no upload: --storage-connect names the same daemon's real storage")
        with_key = ("--set", f"cloud_init.ssh_authorized_keys=['{ssh_key}']")
        sh.run("snpvirt", "apply", SPEC, *with_key, "-c", hv, "--storage-connect", host)
        sh.run("virsh", "-c", host, "vol-list", "default", "--details")
        sh.run("snpvirt", "status", "ubuntu-cloud", "-c", hv)

        comment("The same guest as a qemu-system-x86_64 command line, in the form of Ubuntu's guide")
        sh.run("snpvirt", "render", SPEC, "--format", "qemu", *with_key, "-c", hv, "--storage-connect", host)
    finally:
        held.close()


if __name__ == "__main__":
    sys.exit(main())
