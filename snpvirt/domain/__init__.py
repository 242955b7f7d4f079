"""The domain document: spec files (spec), SEV parameters (sevparams), rendering to libvirt XML (render),
the SEV-SNP rules (rules), checking XML against libvirt's schema and the rules (xml), fixes for imported
domains (importer), snpvirt's metadata element (metadata), drift between two definitions (drift),
launch files missing on this machine (localfiles), and what `list` and `status` show of a domain
(inventory).

May import: the vocabulary (errors, models, policy, fileio), attest/ and launch/. Import the XML module
as `from snpvirt.domain import xml as domxml`, so no namespace ever shadows the standard library's xml.
"""
