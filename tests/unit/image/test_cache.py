"""The image cache: private to the user, verified files by digest, one download per file at a time."""

import os

import pytest

from snpvirt.errors import ConflictError
from snpvirt.image.cache import Cache, UnsafeCacheError, default_root
from tests.image_mirror import sha256

DIGEST = sha256(b"kernel")


def test_the_folders_are_made_private(tmp_path):
    cache = Cache(tmp_path / "images")
    cache.partial(DIGEST)
    for folder in (tmp_path / "images", tmp_path / "images" / "partial"):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_the_root_follows_snpvirt_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "s"))
    assert default_root() == tmp_path / "s" / "images"
    monkeypatch.delenv("SNPVIRT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x" / "snpvirt" / "images"


def test_a_folder_others_can_use_is_refused(tmp_path):
    (tmp_path / "images").mkdir(mode=0o755)
    os.chmod(tmp_path / "images", 0o755)
    with pytest.raises(UnsafeCacheError, match="mode 0755"):
        Cache(tmp_path / "images").verified(DIGEST)


def test_a_symbolic_link_as_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeCacheError, match="symbolic link"):
        Cache(tmp_path / "images").verified(DIGEST)


def test_verified_path_is_the_file_named_by_its_digest(tmp_path):
    cache = Cache(tmp_path / "images")
    assert cache.verified_path(DIGEST) is None
    cache.verified(DIGEST).write_bytes(b"kernel")
    assert cache.verified_path(DIGEST.upper()) == cache.verified(DIGEST)
    (tmp_path / "images" / "sha256" / sha256(b"x")).symlink_to(cache.verified(DIGEST))
    assert cache.verified_path(sha256(b"x")) is None  # only regular files put there by a check


def test_one_download_of_a_file_at_a_time(tmp_path):
    cache = Cache(tmp_path / "images")
    with cache.downloading(DIGEST) as partial:
        assert partial == cache.partial(DIGEST)
        with pytest.raises(ConflictError, match="another snpvirt is downloading"):
            with Cache(tmp_path / "images").downloading(DIGEST):
                pass
    with cache.downloading(DIGEST):
        pass  # free again


def test_names_that_are_not_digests_never_become_paths(tmp_path):
    with pytest.raises(ValueError):
        Cache(tmp_path / "images").partial("../../etc/passwd")
