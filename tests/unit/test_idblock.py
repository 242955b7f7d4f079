"""ID blocks: the published vectors byte for byte, signatures that verify, keys that must be P-384."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from snpvirt import amd_ecdsa, idblock
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError
from tests.conftest import vector


def cases():
    path = "measurement/expected-upstream.json"
    return json.loads(vector(path).read_text())["id_block"]


def launch_digest(case):
    if "launch_digest_hex" in case:
        return bytes.fromhex(case["launch_digest_hex"])
    return base64.b64decode(case["launch_digest_b64"])


@pytest.mark.parametrize("index", [0, 1])
def test_published_id_blocks_and_key_digests(index):
    case = cases()[index]
    keys = [idblock.load_private_key(vector(f"measurement/{case[k]}"), k) for k in ("id_key", "author_key")]
    built = idblock.build(launch_digest(case), 0x30000, *keys)
    assert base64.b64encode(built.id_block).decode() == case["expected_id_block_b64"]
    assert base64.b64encode(built.id_key_digest).decode() == case["expected_id_key_digest_b64"]
    assert base64.b64encode(built.author_key_digest).decode() == case["expected_author_key_digest_b64"]
    # The randomisable parts: both signatures verify with the public keys, in AMD's little-endian layout.
    id_key_struct = built.id_auth[0x240:0x240 + 0x404]
    assert amd_ecdsa.verify(keys[0].public_key(), built.id_auth[0x40:0x40 + 512], built.id_block)
    assert amd_ecdsa.verify(keys[1].public_key(), built.id_auth[0x680:0x680 + 512], id_key_struct)
    assert not amd_ecdsa.verify(keys[1].public_key(), built.id_auth[0x40:0x40 + 512], built.id_block)
    assert len(built.id_block) == 96 and len(built.id_auth) == 4096


def test_id_auth_from_the_stored_signatures_is_byte_for_byte_the_published_one():
    folder = "measurement/idblock-virtee-sev"
    id_key = idblock.load_private_key(vector(f"{folder}/test_id_key.pem"), "ID key")
    author = idblock.load_private_key(vector(f"{folder}/test_auth_key.pem"), "author key")
    auth = idblock.id_auth(vector(f"{folder}/test_id_sig.bin").read_bytes(), amd_ecdsa.public_key_struct(id_key),
                           vector(f"{folder}/test_auth_sig.bin").read_bytes(), amd_ecdsa.public_key_struct(author))
    assert auth == vector(f"{folder}/test_auth_block.bin").read_bytes()
    block = idblock.id_block(launch_digest(cases()[0]), 0x30000)
    assert amd_ecdsa.verify(id_key.public_key(), vector(f"{folder}/test_id_sig.bin").read_bytes(), block)


def test_key_digests_read_from_a_published_id_auth():
    """A ready-made <idAuth> tells which key digests the report must carry: the published ID_AUTH's
    public keys hash to the published digests; without authorKey='yes' the author digest reads as zeros."""
    auth_b64 = base64.b64encode(vector("measurement/idblock-virtee-sev/test_auth_block.bin").read_bytes()).decode()
    id_digest, author_digest = idblock.launched_key_digests(auth_b64, author_key_enabled=True)
    assert base64.b64encode(id_digest).decode() == "WfssaG36T+9J84M5qndckAUcKNVzg93DuvO160sUlt87DbvcuuX+J2d6ZEggdz/i"
    assert base64.b64encode(author_digest).decode() == "7tgRafsMteDsNHlPEo/U4MSkb2fGWhrfqB/LJLzAiMJyNpt//D6ytq9qQoShs2xf"
    assert idblock.launched_key_digests(auth_b64, author_key_enabled=False) == (id_digest, bytes(48))
    for broken in ("not base64!", base64.b64encode(bytes(4095)).decode()):
        with pytest.raises(BadInputError, match="not 4096 bytes of base64"):
            idblock.launched_key_digests(broken, author_key_enabled=False)


def test_signing_is_deterministic_so_rerendering_changes_nothing():
    key = idblock.load_private_key(vector("measurement/idblock-virtee-sev/test_id_key.pem"), "ID key")
    digest = launch_digest(cases()[0])
    assert idblock.build(digest, 0x30000, key).id_auth == idblock.build(digest, 0x30000, key).id_auth


@pytest.mark.parametrize("make,fragment", [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "not a P-384 EC private key"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "not a P-384 EC private key"),
    (None, "not an unencrypted PEM private key"),
])
def test_keys_that_are_not_p384_are_refused(tmp_path, make, fragment):
    path = tmp_path / "key.pem"
    if make is None:
        path.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    else:
        path.write_bytes(make().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    with pytest.raises(BadInputError, match=fragment) as info:
        idblock.load_private_key(path, "ID key")
    assert "secp384r1" in info.value.hint


def test_idblock_cli_json(capsys):
    case = cases()[0]
    code = run(["idblock", "--measurement", case["launch_digest_hex"], "--policy", "0x30000",
                "--id-key", str(vector(f"measurement/{case['id_key']}")),
                "--author-key", str(vector(f"measurement/{case['author_key']}")), "--json"])
    item = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and item["id_block"] == case["expected_id_block_b64"]
    # Digests in hex, as attest show prints the report's; the blobs in base64, as libvirt takes them.
    assert item["id_key_digest"] == base64.b64decode(case["expected_id_key_digest_b64"]).hex()
    assert len(base64.b64decode(item["id_auth"])) == 4096


def test_idblock_cli_refuses_a_bad_policy_and_a_short_measurement(capsys):
    key = str(vector("measurement/idblock-virtee-sev/test_id_key.pem"))
    assert run(["idblock", "--measurement", "00" * 48, "--policy", "0x24", "--id-key", key]) == 2
    assert "bit 17" in capsys.readouterr().err
    assert run(["idblock", "--measurement", "00" * 47, "--id-key", key]) == 2
    assert "48 bytes of hex" in capsys.readouterr().err
