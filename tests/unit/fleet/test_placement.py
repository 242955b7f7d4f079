"""Placement is a pure function: the safety rules as examples and as Hypothesis properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from snpvirt.fleet.placement import Found, HostCapacity, Want, place


def host(name, slots=2, memory=4096, reachable=True, ready=True, labels=None, taken=()):
    return HostCapacity(name, reachable, ready, labels or {}, slots, memory, frozenset(taken))


def test_most_free_slots_then_most_memory_then_name():
    hosts = [host("a", slots=1, memory=9000), host("b", slots=2, memory=100 * 1024), host("c", slots=2, memory=200 * 1024)]
    assert place(hosts, [Want("x", 512)], []).placed == {"x": "c"}
    hosts = [host("b", slots=2), host("a", slots=2)]
    assert place(hosts, [Want("x", 512)], []).placed == {"x": "a"}


def test_two_two_one():
    hosts = [host(n) for n in ("h1", "h2", "h3")]
    result = place(hosts, [Want(f"db-{i}", 256) for i in range(1, 6)], [])
    assert sorted(list(result.placed.values()).count(h) for h in ("h1", "h2", "h3")) == [1, 2, 2]
    assert place(hosts, [Want(f"db-{i}", 256) for i in range(1, 8)], []).unplaceable.keys() == {"db-7"}


def test_nothing_new_while_it_may_be_on_an_unreachable_host():
    hosts = [host("h1"), host("h2", reachable=False)]
    result = place(hosts, [Want("db", 256)], [])
    assert result.placed == {} and "h2" in result.unknown["db"]


def test_a_pin_elsewhere_is_not_blocked_by_an_unreachable_host():
    hosts = [host("h1"), host("h2", reachable=False)]
    assert place(hosts, [Want("db", 256, pin="h1")], []).placed == {"db": "h1"}


def test_an_existing_domain_stays_and_a_shut_off_one_needs_a_slot_to_start():
    hosts = [host("h1", slots=0), host("h2", slots=5)]
    assert place(hosts, [Want("db", 256)], [Found("db", "h1", active=True)]).placed == {"db": "h1"}
    result = place(hosts, [Want("db", 256)], [Found("db", "h1", active=False)])
    assert result.placed == {} and "h1" in result.unplaceable["db"]


def test_spread_and_labels_and_taken_names():
    hosts = [host("h1", labels={"rack": "r1"}), host("h2", labels={"rack": "r1"}), host("h3", labels={"rack": "r2"})]
    result = place(hosts, [Want(f"w-{i}", 256, spread="rack") for i in (1, 2, 3)], [])
    assert sorted(hosts[int(h[1]) - 1].labels["rack"] for h in result.placed.values()) == ["r1", "r2"]
    assert "w-3" in result.unplaceable
    assert place(hosts, [Want("x", 256, labels={"rack": "r2"})], []).placed == {"x": "h3"}
    assert place([host("h1", taken={"x"})], [Want("x", 256)], []).unplaceable


def test_a_host_that_is_not_ready_takes_nothing_new():
    assert place([host("h1", ready=False)], [Want("x", 256)], []).unplaceable


def test_duplicates_are_reported_and_the_running_copy_counts():
    result = place([host("h1"), host("h2")], [Want("x", 256)], [Found("x", "h1", False), Found("x", "h2", True)])
    assert result.placed == {"x": "h2"} and result.duplicates == {"x": ("h1",)}


# --- properties -----------------------------------------------------------------------------------

names = st.sampled_from([f"h{i}" for i in range(1, 6)])
hosts_strategy = st.lists(st.builds(host, names, slots=st.none() | st.integers(0, 4), memory=st.none() | st.integers(0, 4096),
                                    reachable=st.booleans(), ready=st.booleans(),
                                    labels=st.dictionaries(st.just("rack"), st.sampled_from(["r1", "r2"]), max_size=1)),
                          min_size=1, max_size=5, unique_by=lambda h: h.name)


@st.composite
def scenes(draw):
    hosts = draw(hosts_strategy)
    spread = draw(st.lists(st.none() | st.just("rack"), min_size=3, max_size=3))  # a [[domains]] entry's, for its copies
    wants = []
    for i in range(draw(st.integers(0, 10))):
        group = draw(st.integers(0, 2))
        wants.append(Want(f"d{i}", draw(st.integers(128, 2048)), draw(st.booleans()), group, draw(st.none() | names),
                          spread=spread[group]))
    found = [Found(w.name, draw(st.sampled_from([h.name for h in hosts])), draw(st.booleans()))
             for w in wants if draw(st.booleans())]
    return hosts, wants, found


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_placement_properties(scene):
    hosts, wants, found = scene
    by_name = {h.name: h for h in hosts}
    result = place(hosts, wants, found)
    assert result == place(hosts, wants, found)  # deterministic
    first_found = {}
    for f in sorted(found, key=lambda f: (not f.active, f.host)):
        if by_name[f.host].reachable:
            first_found.setdefault(f.name, f)
    for name, host_name in result.placed.items():
        assert by_name[host_name].reachable  # never on an unreachable host
        if name in first_found:
            assert host_name == first_found[name].host  # an existing domain is never moved
    for want in wants:
        if want.name in result.new:
            assert by_name[result.placed[want.name]].ready
            if want.pin:
                assert result.placed[want.name] == want.pin
        found_active = [f for f in found if f.name == want.name and f.active and by_name[f.host].reachable]
        if found_active:
            assert result.placed.get(want.name) == first_found[want.name].host  # a running domain stays
        # each domain is in exactly one outcome
        assert sum(want.name in d for d in (result.placed, result.unknown, result.unplaceable)) == 1
        if want.name in result.new and any(not h.reachable and (want.pin in (None, h.name)) for h in hosts):
            raise AssertionError("placed while it may be on an unreachable host")
    for h in hosts:  # never more started than slots and memory allow
        starting = [w for w in wants if result.placed.get(w.name) == h.name and w.running
                    and not any(f.name == w.name and f.host == h.name and f.active for f in found)]
        if starting:
            assert h.slots_free is not None and len(starting) <= h.slots_free
            assert h.memory_free_mib is not None and sum(w.memory_mib for w in starting) <= h.memory_free_mib
    for want in wants:  # spread: a new copy never shares a rack with another copy of its entry
        if want.spread and want.name in result.new:
            rack = by_name[result.placed[want.name]].labels.get("rack")
            others = [by_name[result.placed[w.name]].labels.get("rack") for w in wants
                      if w.group == want.group and w.name != want.name and w.name in result.placed]
            assert rack is not None and rack not in others


# --- the examples behind the mutants scripts/mutation found (each line pins one decision) -----------------

def reason(hosts, want):
    return place(hosts, [want], []).unplaceable[want.name]


def test_every_reason_a_host_refuses_is_given_word_for_word():
    hosts = [host("h1", labels={"rack": "r1"}), host("h2", reachable=False, labels={"rack": "r1"})]
    assert reason(hosts, Want("x", 256, labels={"rack": "r2", "zone": "z"})) == \
        "no host takes it (h1: lacks label rack=r2, zone=z; h2: unreachable)"
    hosts = [host("h1", slots=None), host("h2", slots=0), host("h3", memory=None), host("h4", memory=400)]
    assert reason(hosts, Want("x", 600)) == ("no host takes it (h1: SNP capacity unknown (set snp_guests); "
                                             "h2: no free SNP slot; h3: not enough free memory (unknown MiB free, needs 600); "
                                             "h4: not enough free memory (400 MiB free, needs 600))")


def test_a_pinned_domain_gives_only_its_hosts_reason():
    assert reason([host("h1"), host("h2", ready=False)], Want("x", 256, pin="h2")) == \
        "no host takes it (h2: not ready for SEV-SNP)"


def test_the_unknown_names_every_host_it_may_be_on():
    hosts = [host("h1"), host("h2", reachable=False), host("h3", reachable=False)]
    assert place(hosts, [Want("x", 256)], []).unknown == \
        {"x": "not found on the reachable hosts; it may exist on h2, h3, which cannot be reached"}


def test_an_unreachable_host_blocks_only_the_domains_whose_labels_it_carries():
    reachable = host("h1", labels={"rack": "r2"})
    other_rack = place([reachable, host("h2", reachable=False, labels={"rack": "r1"})], [Want("x", 256, labels={"rack": "r2"})], [])
    assert other_rack.placed == {"x": "h1"} and other_rack.unknown == {}
    same_rack = place([reachable, host("h2", reachable=False, labels={"rack": "r2"})], [Want("x", 256, labels={"rack": "r2"})], [])
    assert same_rack.placed == {} and "h2" in same_rack.unknown["x"]


def test_the_last_slot_and_exactly_enough_memory_are_enough():
    assert place([host("h1", slots=1, memory=600)], [Want("x", 600)], []).placed == {"x": "h1"}
    existing = place([host("h1", slots=1, memory=600)], [Want("x", 600)], [Found("x", "h1", active=False)])
    assert existing.placed == {"x": "h1"} and existing.new == frozenset() and existing.duplicates == {}


def test_what_a_started_domain_uses_is_gone_for_the_next():
    """An existing domain to start and a new one share a host's memory: the second no longer fits."""
    result = place([host("h1", slots=5, memory=1000)], [Want("old", 600), Want("new", 600)], [Found("old", "h1", active=False)])
    assert result.placed == {"old": "h1"}
    assert result.unplaceable == {"new": "no host takes it (h1: not enough free memory (400 MiB free, needs 600))"}


def test_a_stopped_domain_goes_where_more_is_free_even_by_one_and_unknown_counts_as_none():
    stopped = Want("x", 256, running=False)
    assert place([host("a", slots=None, memory=100), host("b", slots=0, memory=200)], [stopped], []).placed == {"x": "b"}
    assert place([host("a", slots=0), host("b", slots=1)], [stopped], []).placed == {"x": "b"}
    assert place([host("a", memory=0), host("b", memory=1)], [stopped], []).placed == {"x": "b"}
