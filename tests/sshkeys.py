"""Real SSH public keys for specs with [cloud_init], made by ssh-keygen in the test's own folder."""

from __future__ import annotations

import subprocess
from pathlib import Path


def public_key(folder: Path, kind: str = "ed25519", comment: str = "alice@laptop") -> str:
    """A fresh key pair in `folder`; returns the public key's line (the private key stays there, unused)."""
    key = folder / f"id_{kind}"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)],
                       check=True, capture_output=True, timeout=30)
    return (folder / f"id_{kind}.pub").read_text().strip()
