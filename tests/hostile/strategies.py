"""Hostile values shared by the tier: odd text, wrong types, huge numbers, deep nesting, and a TOML writer."""

from __future__ import annotations

import datetime
import math

from hypothesis import strategies as st


class RawToml(str):
    """TOML text written as it is: nesting too deep for a recursive writer, numbers too long for str()."""

# Text that has broken parsers before: NUL and other C0/C1 controls, line and paragraph separators,
# bidi overrides, zero-width and combining characters, non-ASCII digits (int() and str.isdigit() take
# them), full-width letters, non-BMP characters, a BOM, XML-special characters, and shell/path syntax.
ODD_CHARACTERS = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\r", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029",
                  "\u202e", "\u200b", "\u200d", "\u0301", "\ufeff", "\ufffe", "\uffff", "\U0001f4a9", "\U0010ffff",
                  "\u0663", "\u00b2", "\uff11", "\u2167", "\uff41", "\u0130", "\u00df", "<", "&", "'", '"', "]]>",
                  "$(id)", "`", "..", "/", "\\", "%s", "%n", "{", "}", "\t", "\n"]

odd_text = st.lists(st.one_of(st.sampled_from(ODD_CHARACTERS), st.text(st.characters(codec="utf-8"), max_size=4)),
                    max_size=12).map("".join)
huge_text = st.sampled_from([1_000, 70_000, 1_100_000]).flatmap(
    lambda n: st.sampled_from(["a", "\u0663", "\U0001f4a9", "\x00", "<&"]).map(lambda c: c * n))
any_text = st.one_of(odd_text, st.text(max_size=30), huge_text)

huge_int = st.one_of(
    st.sampled_from([-(2 ** 63), 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, 2 ** 128, -1, 0, 10 ** 400]),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
)
odd_float = st.one_of(st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 1e308, 5e-324]), st.floats())
moments = st.one_of(st.datetimes(), st.dates(), st.times(),
                    st.datetimes(timezones=st.just(datetime.timezone.utc)))
# Past Python's int <-> str digit limit (4300): tomllib's int() raises ValueError, not TOMLDecodeError.
too_many_digits = st.sampled_from(["9" * 5000, "-" + "1" * 4301, "0x" + "f" * 5000])
scalars = st.one_of(any_text, huge_int, odd_float, st.booleans(), moments)


def nested(depth: int) -> RawToml:
    """Arrays and inline tables alternately, `depth` deep, around the integer 1."""
    opening = "".join("[" if level % 2 else "{k = " for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return RawToml(opening + "1" + closing)


deep = st.one_of(st.integers(min_value=1, max_value=40), st.integers(min_value=40, max_value=3000)).map(nested)
values = st.one_of(scalars, deep, too_many_digits.map(RawToml), st.lists(scalars, max_size=4), st.dictionaries(odd_text, scalars, max_size=3))


# --- TOML writing ----------------------------------------------------------------------------------
# tomllib only reads; the tier writes documents itself so that every generated value reaches the
# parser as the TOML a user could have typed (every control character escaped, as TOML requires).

def toml_string(text: str) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, RawToml):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict) -> str:
    """One `"key" = value` line per top-level key; tables inline (any nesting, any key text)."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())
