"""Real libvirt for the integration tests: the in-process test driver and isolated libvirtd daemons."""

from __future__ import annotations

import libvirt
import pytest

from tests.integration.daemon import IsolatedLibvirtd, libvirtd_available
from tests.integration.sshd import loopback_sshd, ssh_libvirtd  # noqa: F401  (fixtures: a real SSH transport)


@pytest.fixture(scope="session")
def test_driver():
    """libvirt's in-process test driver; its state lives while this connection stays open."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
def clean_test_driver(test_driver):
    """The test driver, with every domain a test defines destroyed and undefined afterwards."""
    before = {d.name() for d in test_driver.listAllDomains()}
    yield test_driver
    for dom in test_driver.listAllDomains():
        if dom.name() not in before:
            if dom.isActive():
                dom.destroy()
            dom.undefine()


@pytest.fixture
def conn(clean_test_driver):
    """snpvirt's own Connection to the in-process test driver, over the cleaned-up driver."""
    from snpvirt.libvirt.connection import Connection

    with Connection("test:///default") as connection:
        yield connection


@pytest.fixture(scope="session")
def qemu_caps_cache(tmp_path_factory):
    """One QEMU capability cache for every daemon: only the first pays for probing QEMU (~8 s)."""
    return tmp_path_factory.mktemp("qemu-caps")


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory, qemu_caps_cache):
    """A real libvirtd in its own mount namespace, with its own socket: a separate 'host'."""
    reason = libvirtd_available()
    if reason:
        pytest.skip(reason)
    with IsolatedLibvirtd(tmp_path_factory.mktemp("libvirtd"), qemu_caps_cache) as daemon:
        yield daemon


@pytest.fixture
def held(libvirtd):
    """The daemon's test driver keeps state only while a client is connected: hold one for the test."""
    conn = libvirt.open(libvirtd.test_uri)
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()
