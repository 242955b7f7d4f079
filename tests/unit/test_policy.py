import pytest

from snpvirt import policy
from snpvirt.errors import BadInputError


def test_default_is_smt_plus_must_be_one():
    assert policy.from_fields({"smt": True}) == 0x30000 == policy.DEFAULT_POLICY
    assert policy.from_fields({}) == 0x20000


@pytest.mark.parametrize("name,bit", [("migrate_ma", 18), ("debug", 19), ("single_socket", 20), ("cxl_allow", 21),
                                      ("mem_aes_256_xts", 22), ("rapl_dis", 23), ("ciphertext_hiding", 24),
                                      ("page_swap_disable", 25)])
def test_each_named_flag_sets_its_bit(name, bit):
    assert policy.from_fields({name: True}) == 0x20000 | (1 << bit)
    assert policy.set_flag_names(0x20000 | (1 << bit)) == [name]


def test_abi_fields_and_round_trip():
    value = policy.from_fields({"abi_major": 1, "abi_minor": 51, "smt": True})
    assert value == 0x30000 | (1 << 8) | 51
    assert policy.from_fields({k: v for k, v in policy.to_fields(value).items()}) == value


def test_abi_out_of_range_is_rejected():
    with pytest.raises(BadInputError, match="out of range 0..255"):
        policy.from_fields({"abi_major": 256})


def test_problems():
    assert policy.problems(0x30000) == []
    assert [p.rule_id for p in policy.problems(0x24)] == ["snp.policy_bit17"]
    assert [p.rule_id for p in policy.problems(0x30000 | 1 << 40)] == ["snp.policy_reserved"]
    assert [p.rule_id for p in policy.problems(0xB0000)] == ["snp.policy_debug"]
    assert policy.problems(0xB0000, allow_debug=True) == []


def test_hex_is_lowercase_and_parsing_is_strict():
    assert policy.to_hex(0xB0000) == "0xb0000"
    assert policy.parse_hex("0x00030000") == 0x30000
    assert policy.parse_hex("30000") == 0x30000
    for bad in ("", "0x", "0x3g", "30 000", "-1"):
        with pytest.raises(BadInputError):
            policy.parse_hex(bad)
