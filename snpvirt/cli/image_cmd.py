"""`snpvirt image pull|list`: Ubuntu cloud images, verified, as volumes of a libvirt storage pool."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from snpvirt.cli.common import connect_option, json_option, sub_app

image_app = sub_app()


@image_app.callback()
def image() -> None:
    """Ubuntu cloud images, verified (gpgv, SHA-256), as volumes of a libvirt storage pool."""


PULL_EPILOG = """\b
Examples:
  snpvirt image pull ubuntu:24.04
  snpvirt image pull ubuntu:noble --pool default -c qemu+ssh://root@host/system
  snpvirt image pull ubuntu:25.04 --mirror http://MIRROR/cloud-images --keyring ./mirror-key.gpg --json
Volumes (amd64): ubuntu-24.04.qcow2, ubuntu-24.04.vmlinuz, ubuntu-24.04.initrd, and the manifest
ubuntu-24.04.snpvirt-image.json. Pulling again sends nothing when the pool holds the signed build.
Exit 0: in the pool · 1: a signature or a SHA-256 did not check out (nothing kept) · 2: bad arguments ·
4: the mirror has no such image · 5: a volume of that name holds other bytes · 6: mirror or libvirt
unreachable · 7: the mirror stalled on every attempt (run again: the download resumes).
"""


@image_app.command("pull", epilog=PULL_EPILOG)
def pull(
    ref: str = typer.Argument(..., metavar="IMAGE", help="ubuntu:VERSION or ubuntu:CODENAME (ubuntu:24.04, ubuntu:noble)."),
    pool: str = typer.Option("default", "--pool", metavar="NAME",
                             help="Storage pool; created as a dir pool under /var/lib/snpvirt/images if absent."),
    connect: Optional[str] = connect_option(),
    mirror: Optional[str] = typer.Option(None, "--mirror", metavar="URL", envvar="SNPVIRT_IMAGE_MIRROR",
                                         show_envvar=True, help="The folder holding releases/ (default: Ubuntu's "
                                                                "cloud-images site)."),
    arch: str = typer.Option("amd64", "--arch", metavar="ARCH", help="amd64, arm64, ppc64el, s390x or riscv64."),
    keyring: Path = typer.Option(Path("/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg"), "--keyring",
                                 metavar="FILE", help="OpenPGP keyring that must have signed SHA256SUMS (gpgv)."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, max=3600, metavar="S",
                                  help="Seconds without data before a download is retried (resuming where it stopped)."),
    json_output: bool = json_option(),
) -> None:
    """Download an image's disk, kernel and initrd, verify them, and store them as pool volumes."""
    from snpvirt import imagepool, output
    from snpvirt.image import catalog
    from snpvirt.image.cache import Cache
    from snpvirt.image.fetch import Fetcher
    from snpvirt.libvirt import storage

    image_ref = catalog.resolve(ref, arch, mirror)
    progress = _Progress(quiet=json_output)
    fetcher = Fetcher(timeout_s=timeout, on_progress=progress.transfer, on_retry=progress.step)
    with storage.connect(connect) as store:
        result = imagepool.pull(image_ref, store, pool, Cache(), fetcher, keyring, storage.DEFAULT_POOL_DIR,
                                imagepool.Reporter(progress.step, progress.transfer))
    if json_output:
        item = output.result(_label(image_ref), True, result.changed, **result.as_dict())
        output.print_json(output.envelope(True, result.changed, [item]))
        return
    rows = [(f["volume"], f["action"], f["sha256"], _size(f["size_bytes"])) for f in result.files]
    typer.echo(output.table(("VOLUME", "ACTION", "SHA256", "SIZE"), rows))
    where = f"pool {pool}" + (" (created)" if result.pool_created else "")
    if result.changed:
        typer.echo(f"{_label(image_ref)} ({image_ref.codename}) is in {where}; {_size(result.downloaded_bytes)} downloaded")
    else:
        typer.echo(f"{_label(image_ref)} ({image_ref.codename}): {where} already holds this build; nothing downloaded")


LIST_EPILOG = """\b
Examples:
  snpvirt image list
  snpvirt image list --pool default -c qemu+ssh://root@host/system --json
"""


@image_app.command("list", epilog=LIST_EPILOG)
def list_images(
    pool: str = typer.Option("default", "--pool", metavar="NAME", help="Storage pool to look in."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
) -> None:
    """The images `image pull` stored in a pool: version, volumes, SHA-256 and size."""
    from snpvirt import imagepool, output
    from snpvirt.libvirt import storage

    with storage.connect(connect) as store:
        images = imagepool.list_images(store, pool)
    if json_output:
        results = [output.result(_label_of(i), True, False, **i) for i in images]
        output.print_json(output.envelope(True, False, results, pool=pool))
        return
    rows = [(_label_of(i), i["version"], i["arch"], f["volume"], f["sha256"], _size(f["size_bytes"]),
             "present" if f["present"] else "MISSING") for i in images for f in i["files"]]
    if not rows:
        typer.echo(f"no images in pool {pool}; get one with: snpvirt image pull ubuntu:24.04 --pool {pool}")
        return
    typer.echo(output.table(("IMAGE", "VERSION", "ARCH", "VOLUME", "SHA256", "SIZE", "VOLUME STATE"), rows))


def _label(image_ref) -> str:
    return image_ref.ref + ("" if image_ref.arch == "amd64" else f"/{image_ref.arch}")


def _label_of(entry: dict) -> str:
    return f"{entry['image']}" + ("" if entry.get("arch") == "amd64" else f"/{entry.get('arch')}")


def _size(n: object) -> str:
    if not isinstance(n, int):
        return "?"
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} B"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02}"


class _Progress:
    """Progress on stderr, silent with --json: steps as lines; transfers as one line redrawn on a terminal,
    or a line every few seconds (and at the end) in a log."""

    LOG_EVERY_S = 5.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def step(self, message: str) -> None:
        if not self.quiet:
            self._end_line()
            from snpvirt import output
            output.print_progress(message)

    def transfer(self, t) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and not t.finished and now - self._last < self.LOG_EVERY_S:
            return
        self._last = now
        total = f" of {_size(t.total)}" if t.total else ""
        percent = f" ({100 * t.done // t.total}%)" if t.total else ""
        line = f"snpvirt: {t.name}: {_size(t.done)}{total}{percent}  {_size(int(t.rate))}/s  {_clock(t.eta_s)} left"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if t.finished else ""))
            self._open = not t.finished
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _end_line(self) -> None:
        if self.tty and getattr(self, "_open", False):
            sys.stderr.write("\n")
            self._open = False
