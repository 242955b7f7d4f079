"""AMD's Key Distribution Service: ARK/ASK chains and per-chip VCEKs, with a cache and polite retries.

URL scheme: docs/measurement.md §11.4. `--kds-url` / SNPVIRT_KDS_URL point at a mirror or proxy.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from snpvirt.errors import ConnectionFailedError, NotFoundError, SnpvirtError
from snpvirt.report import Report

DEFAULT_URL = "https://kdsintf.amd.com"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0  # a Retry-After longer than this is capped: a command should not hang for hours


def default_cache() -> Path:
    base = os.environ.get("SNPVIRT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "snpvirt")
    return Path(base) / "kds"


def vcek_query(report: Report, product: str) -> tuple[str, str]:
    """(hwid, query) for a report's chip and reported TCB; Turin uses 8 bytes of the chip id and adds fmcSPL."""
    tcb = report.tcb(report.reported_tcb, product).parts
    spl = "blSPL={bootloader:02}&teeSPL={tee:02}&snpSPL={snp:02}&ucodeSPL={microcode:02}".format(**tcb)
    if product == "turin":
        return report.chip_id[:8].hex(), f"fmcSPL={tcb['fmc']:02}&{spl}"
    return report.chip_id.hex(), spl


@dataclass
class Kds:
    base_url: str = DEFAULT_URL
    cache: Path | None = None
    timeout_s: float = 10.0
    attempts: int = 4
    backoff_s: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    fetched: int = 0  # network requests made (the cache avoids them)

    def _get(self, path: str, cache_name: str) -> bytes:
        cached = self.cache / cache_name if self.cache else None
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        url = self.base_url.rstrip("/") + path
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            self.fetched += 1
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # noqa: S310 - https or a mirror
                    data = response.read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise NotFoundError(f"KDS has no {cache_name} ({url}: 404)",
                                        "check the product (--product) and that the report's TCB is one AMD published") from None
                if exc.code not in RETRY_STATUS or attempt == self.attempts:
                    raise ConnectionFailedError(f"KDS answered {exc.code} for {url}",
                                                "try again later, or use a mirror with --kds-url") from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = min(float(retry_after), MAX_WAIT_S) if retry_after and retry_after.isdigit() else delay
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                if attempt == self.attempts:
                    reason = getattr(exc, "reason", exc)
                    raise ConnectionFailedError(f"cannot reach KDS at {self.base_url}: {reason}",
                                                "check the network, or point --kds-url / SNPVIRT_KDS_URL at a mirror") from None
                wait = delay
            self.sleep(wait)
            delay *= 2
        # Only certificates are cached: a proxy's error page answered with 200 must not stick forever.
        from snpvirt import certs
        try:
            certs.load(data, url)
        except SnpvirtError:
            raise ConnectionFailedError(f"{url} did not return a certificate ({len(data)} bytes)",
                                        "check --kds-url: it must point at AMD KDS or a faithful mirror") from None
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_suffix(cached.suffix + f".{os.getpid()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, cached)  # a fleet sharing the cache never reads half a file
        return data

    def cert_chain(self, product: str, signer: str = "vcek") -> bytes:
        """PEM: ASK (or ASVK for VLEK) then ARK."""
        return self._get(f"/{signer}/v1/{product.capitalize()}/cert_chain", f"{product}/{signer}-cert_chain.pem")

    def vcek(self, report: Report, product: str) -> bytes:
        """DER VCEK for the report's chip id and reported TCB."""
        if report.signing_key != "vcek":
            raise SnpvirtError("this report is signed with a VLEK, which KDS does not hand out per chip",
                               "use the VLEK from the guest's extended report (snpvirt guest report --certs-out DIR)")
        hw_id, query = vcek_query(report, product)
        return self._get(f"/vcek/v1/{product.capitalize()}/{hw_id}?{query}",
                         f"{product}/vcek-{hw_id[:16]}-{query.replace('&', '_').replace('=', '')}.der")
