"""A fleet's renamed copies of one spec are rendered once (domain/copies.py): each copy's document must be
byte for byte the document a fresh render of that copy gives, whatever the spec, or the copies path
would define something no render produced."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given

from snpvirt.domain import drift, render, sevparams
from snpvirt.domain import spec as specs
from snpvirt.domain.copies import (MAC_PLACEHOLDERS, PLACEHOLDER, UUID_PLACEHOLDER, CopyRenderer,
                                   holds_identity_placeholder)
from snpvirt.orchestration.apply import Applying
from snpvirt.fleet.fleetfile import _owned
from snpvirt.launch import inputs as launch
from snpvirt.models import Stamp
from tests.unit.test_properties import BASE, SETTINGS, valid_specs

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NOW = "2026-11-27T04:00:00+00:00"


def fresh(spec, stamped: bool = True) -> str:
    """The full render, as the manager makes it: launch record, stamp, template."""
    if not stamped:
        return render.render_xml(spec, sevparams.resolve(spec, []))
    record = launch.record(spec)
    return render.render_xml(spec, sevparams.resolve(spec, []), Stamp(NOW, NOW, record.expected.digests), record)


def copies(spec, count: int = 3, fleet: str = "prod", defined: bool = False):
    """The fleet's copies; `defined`: each with the UUID and MACs libvirt gave it, as a redefinition keeps them."""
    made = [_owned(spec, f"{spec.name}-{n}", fleet, None) for n in range(1, count + 1)]
    if not defined:
        return made
    return [dataclasses.replace(copy, uuid=f"00000000-0000-4000-8000-{n:012x}", networks=tuple(
        dataclasses.replace(net, mac=net.mac or f"52:54:00:00:{n:02x}:{i:02x}") for i, net in enumerate(copy.networks)))
        for n, copy in enumerate(made, 1)]


def assert_copies_render_as_fresh(spec, stamped: bool = True, context=(NOW,)) -> CopyRenderer:
    renderer = CopyRenderer()
    for defined in (False, True):
        for copy in copies(spec, defined=defined):
            assert renderer.render(copy, context, lambda s: fresh(s, stamped)) == fresh(copy, stamped), copy.name
    return renderer


def example(name: str):
    return specs.load_spec(EXAMPLES / f"{name}.toml", ["snp.cbitpos=51", "snp.reduced_phys_bits=1"])


def test_the_examples_copies_are_their_fresh_renders():
    for name in ("web-01", "db-01"):
        renderer = assert_copies_render_as_fresh(example(name))
        assert renderer.copies_made == 4, "the first copy of each shape is rendered, the others filled in"


@SETTINGS
@given(raw=valid_specs())
def test_every_valid_specs_copies_are_their_fresh_renders(raw):
    assert_copies_render_as_fresh(specs.parse_spec(raw), stamped=False)


def test_a_cloud_init_specs_copies_name_their_own_seed_volume():
    vm = specs.parse_spec({**BASE, "cloud_init": {"user_data": "/srv/vm/user-data"}})
    assert assert_copies_render_as_fresh(vm, stamped=False).copies_made == 4


def test_a_template_that_uses_the_name_otherwise_makes_no_copies(monkeypatch):
    """Filling in is checked on the first copy of each shape: a render that transforms the name (here: upper
    case) does not match, and every copy is then rendered afresh."""
    vm = example("web-01")

    def shouting(spec):
        return fresh(spec).replace("</name>", f" {spec.name.upper()}</name>")

    renders = []

    def counted(spec):
        renders.append(spec.name)
        return shouting(spec)

    renderer = CopyRenderer()
    for copy in copies(vm):
        assert renderer.render(copy, (NOW,), counted) == shouting(copy)
    assert renderer.copies_made == 0
    assert renders == [PLACEHOLDER, "web-01-1", "web-01-2", "web-01-3"], "the shape is tried once, then each afresh"


def test_a_spec_that_contains_the_placeholder_is_rendered_afresh():
    vm = specs.parse_spec({**BASE, "description": f"see {PLACEHOLDER}"})
    renderer = CopyRenderer()
    for copy in copies(vm):
        xml = renderer.render(copy, (NOW,), fresh)
        assert xml == fresh(copy) and f"see {PLACEHOLDER}" in xml


def test_another_context_is_another_render():
    """The stamp (or seed, or launch files) changed between two copies: the second is not made from the first."""
    vm = example("web-01")
    first, second = copies(vm, 2)
    renderer = CopyRenderer()
    later = "2026-11-27T04:00:01+00:00"
    renderer.render(first, (NOW,), fresh)

    def fresh_later(spec):
        record = launch.record(spec)
        return render.render_xml(spec, sevparams.resolve(spec, []), Stamp(later, later, record.expected.digests), record)

    assert renderer.render(second, (later,), fresh_later) == fresh_later(second)


def test_a_copy_whose_render_fails_fails_with_its_own_name():
    vm = example("web-01")
    copy = copies(vm, 1)[0]

    def failing(spec):
        raise specs.BadInputError(f"{spec.name}: cannot render", "fix it")

    try:
        CopyRenderer().render(copy, (NOW,), failing)
    except specs.BadInputError as err:
        assert err.message == f"{copy.name}: cannot render"
    else:
        raise AssertionError("the render's error was lost")


def test_two_specs_written_differently_are_not_copies_of_each_other():
    """VmSpec equality leaves `source` (the spec as written) out: two specs that parse alike but are written
    differently (a default spelt out) have equal shapes, yet each records its own JSON in the metadata. The
    second must not carry the first's JSON under its own digest."""
    terse = specs.parse_spec({**BASE, "name": "a"})
    spelt_out = specs.parse_spec({**BASE, "name": "b", "memory_backing": "memfd"})
    renderer = CopyRenderer()
    renderer.render(terse, (NOW,), fresh)
    xml = renderer.render(spelt_out, (NOW,), fresh)
    assert '"memory_backing":"memfd"' in xml and xml == fresh(spelt_out)


# --- one check of a shape stands for each copy filled in from it (orchestration/apply.py _shape_asked_snp) ------

def shape_check(xml: str):
    """apply's own check of a shape (the Manager's allow_debug off)."""
    applying = Applying()  # the Manager's part on its own: the shape check reads only allow_debug
    applying.allow_debug = False
    return applying._shape_asked_snp(xml)


def own_check(xml: str, name: str):
    """What checking a copy's document on its own gives: the SNP rules pass, and its SNP projection."""
    _, root = render.check_rendered(name, xml)
    return drift.project(root, snp_only=True)


def assert_the_shapes_check_is_each_copys(spec, stamped: bool = True) -> int:
    """Every copy filled in carries the shape's check, and it is the check the copy's own document gets."""
    renderer, stood_in = CopyRenderer(shape_check), 0
    for defined in (False, True):
        for copy in copies(spec, defined=defined):
            xml, checked = renderer.render_checked(copy, (NOW,), lambda s: fresh(s, stamped))
            assert xml == fresh(copy, stamped), copy.name
            if checked is not None:
                assert checked == own_check(xml, copy.name), copy.name
                stood_in += 1
    return stood_in


def test_the_examples_copies_are_checked_once_per_shape():
    for name in ("web-01", "db-01"):
        assert assert_the_shapes_check_is_each_copys(example(name)) == 4, "each filled-in copy, never a first one"


@SETTINGS
@given(raw=valid_specs())
def test_every_valid_specs_shape_check_is_its_copies_own_check(raw):
    assert_the_shapes_check_is_each_copys(specs.parse_spec(raw), stamped=False)


def test_a_shape_whose_snp_settings_hold_the_name_does_not_stand_in():
    """A template that put the name into an SEV-SNP setting (here the kernel command line) gives each copy its
    own projection: the shape's, with a placeholder in it, must not stand in for theirs."""
    vm = example("web-01")

    def name_in_cmdline(spec):
        return fresh(spec).replace("</cmdline>", f" hostname={spec.name}</cmdline>")

    assert "</cmdline>" in fresh(vm)
    renderer = CopyRenderer(shape_check)
    results = [renderer.render_checked(copy, (NOW,), name_in_cmdline) for copy in copies(vm)]
    assert renderer.copies_made == 2 and [checked for _, checked in results] == [None] * 3


def test_a_shape_that_breaks_a_rule_does_not_stand_in():
    """Copies of a spec whose document breaks an SNP rule are each checked on their own, so each fails with
    its own name."""
    vm = example("web-01")

    def with_smm(spec):
        return fresh(spec).replace("<features>", "<features><smm state='on'/>")

    assert "<features>" in fresh(vm)
    renderer = CopyRenderer(shape_check)
    results = [renderer.render_checked(copy, (NOW,), with_smm) for copy in copies(vm)]
    assert renderer.copies_made == 2 and [checked for _, checked in results] == [None] * 3


def test_identity_placeholders_are_found_anywhere_in_a_projection():
    assert not holds_identity_placeholder({"kernel": "/boot/vmlinuz", "vcpus": 2, "qemu.passthrough": [["-x", None]]})
    for value in (PLACEHOLDER, UUID_PLACEHOLDER, MAC_PLACEHOLDERS[7], MAC_PLACEHOLDERS[7].upper()):
        for projection in ({"cmdline": f"a {value} b"}, {value: 1}, {"qemu.passthrough": [("-x", (value,))]}):
            assert holds_identity_placeholder(projection), projection


def _as_copy(spec, **changes):
    """A copy of `spec` with identity values the spec checks would refuse (a VmSpec made by hand, as a
    library caller could): the name recorded in its source too, so only the values themselves differ."""
    copy = dataclasses.replace(spec, **changes)
    return dataclasses.replace(copy, source={**copy.source, "name": copy.name})


@pytest.mark.parametrize("changes", [{"name": "web&01"}, {"uuid": "00000000-0000-4000-8000-00000000000&"},
                                     {"name": "web-01-9", "uuid": "0000<0000"}])
def test_a_copy_whose_identity_escaping_would_change_is_rendered_afresh(changes):
    """Names, UUIDs and MACs are filled in as they are: one that XML or JSON escaping changes is rendered afresh,
    even after a copy of the same shape was made (the first copy's comparison cannot speak for it)."""
    first, second = copies(example("web-01"), 2, defined=True)
    odd = _as_copy(second, **changes)
    renderer = CopyRenderer(shape_check)
    renderer.render_checked(first, (NOW,), fresh)
    assert renderer.render_checked(second, (NOW,), fresh)[1] is not None, "the shape stands in for a plain copy"
    xml, checked = renderer.render_checked(odd, (NOW,), fresh)
    assert (xml, checked) == (fresh(odd), None)


def test_a_spec_whose_source_records_another_name_is_rendered_afresh():
    vm = example("web-01")
    renamed = dataclasses.replace(vm, name="web-02")  # its source (and so its metadata) still says web-01
    renderer = CopyRenderer(shape_check)
    assert renderer.render_checked(renamed, (NOW,), fresh) == (fresh(renamed), None)
    assert renderer.copies_made == 0


@pytest.mark.parametrize(("interfaces", "made"), [(len(MAC_PLACEHOLDERS), 2), (len(MAC_PLACEHOLDERS) + 1, 0)])
def test_copies_are_made_up_to_one_mac_placeholder_per_interface(interfaces, made):
    networks = [{"network": "default", "mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}"} for i in range(interfaces)]
    vm = specs.parse_spec({**BASE, "networks": networks})
    renderer = CopyRenderer()
    for copy in copies(vm):
        assert renderer.render(copy, (NOW,), lambda s: fresh(s, False)) == fresh(copy, False)
    assert renderer.copies_made == made
