"""The libvirt boundary, the only code that imports libvirt-python: the connection (open with a deadline,
errors translated by libvirt error code, typed calls), storage pools and volumes (storage: upload,
overlays, download, over the connection's streams), lifecycle events (events), and what a start
failure means in SEV-SNP terms (explain).

May import: the vocabulary (errors, models, policy, fileio) and `libvirt`. `import libvirt` in here is
absolute (Python 3 has no implicit relative imports), so it loads libvirt-python, not this package.
"""
