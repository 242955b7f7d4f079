"""snpvirt: AMD SEV-SNP confidential VMs through libvirt."""

__version__ = "0.1.0"
