"""Guest images: the cloud-init NoCloud seed (seed.py).

A capability above host/: it may import the vocabulary and the capabilities below it, never libvirt/,
the manager, output or cli. Getting bytes into a pool is the caller's job (libvirt/storage.py).
"""
