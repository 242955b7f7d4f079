"""Attestation, the bottom capability: parse reports (report), check AMD's certificate chain (certs),
fetch certificates from AMD's key service (kds), verify a report against expectations (verify), the
AMD ECDSA P-384 encoding that reports and ID blocks share (amd_ecdsa), and the guest side that asks the
firmware for a report (guest).

May import: the vocabulary (errors, models, policy, fileio) and nothing else of snpvirt.
"""
