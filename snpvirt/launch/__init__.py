"""What the guest will measure: the OVMF structure (ovmf), the launch digest (measure), the launch
inputs a spec names and their digests (inputs), and the signed ID block (idblock).

May import: the vocabulary (errors, models, policy, fileio) and attest/ (idblock signs with amd_ecdsa).
"""
