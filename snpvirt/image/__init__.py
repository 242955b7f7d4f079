"""Guest images: which files make an Ubuntu cloud image (catalog), fetching them over HTTP with deadlines,
retries and resume (fetch), the user's cache of verified files (cache), the checks that make a download
trustworthy: gpgv over SHA256SUMS, then SHA-256 of every file (verify), and the cloud-init NoCloud seed (seed).

The top capability: may import the vocabulary and the capabilities below it; never libvirt/, the
orchestration (imagepool.py, manager.py), output.py or cli/. Nothing here prints.
"""
