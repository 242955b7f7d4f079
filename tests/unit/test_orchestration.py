"""What the manager's parts report (orchestration/base.py): each item's outcome as the JSON envelope carries
it, the SNP rules a definition breaks (never judged on its text), and how definitions changed outside
snpvirt are summed up in one refusal."""

from __future__ import annotations

import datetime

from snpvirt.errors import ConflictError
from snpvirt.orchestration.base import Outcome, drift_text, snp_errors, utc_now
from tests.conftest import GOLDEN

WEB = (GOLDEN / "web-01.xml").read_text()
DEBUG = WEB.replace("<policy>0x30000</policy>", "<policy>0xb0000</policy>")  # bit 19: the host may read the guest


def test_an_outcome_is_its_fields_its_details_and_its_error():
    done = Outcome("web-01", "create", changed=True, state="running", details={"will_start": True})
    assert done.as_dict() == {"name": "web-01", "ok": True, "changed": True, "action": "create", "state": "running",
                              "will_start": True}
    failed = Outcome("web-02", "start").fail(ConflictError("web-02 is not snpvirt's", "import it first"))
    assert failed.as_dict() == {"name": "web-02", "ok": False, "changed": False, "action": "start", "state": None,
                                "error": {"kind": "conflict", "message": "web-02 is not snpvirt's",
                                          "hint": "import it first"}}


def test_a_definition_that_is_not_xml_breaks_one_rule():
    [finding] = snp_errors("<domain type='kvm'><name>x</name>", False)
    assert (finding.rule_id, finding.severity, finding.hint) == ("xml.well_formed", "error",
                                                                 "redefine it from its spec: snpvirt apply SPEC")
    assert finding.message.startswith("the definition is not well-formed XML (")


def test_a_definitions_text_is_parsed_and_every_rule_applied_with_the_debug_allowance():
    assert snp_errors(WEB, False) == []
    assert [f.rule_id for f in snp_errors(DEBUG, False)] == ["snp.policy_debug"]
    assert snp_errors(DEBUG, True) == [], "--allow-debug: a throw-away test guest"


def test_drift_is_summed_up_in_three_changes_and_a_count():
    changes = [{"key": k, "from": 1, "to": 2} for k in ("a", "b", "c", "d")]
    three = "a: 1, snpvirt defined 2; b: 1, snpvirt defined 2; c: 1, snpvirt defined 2"
    assert drift_text(changes[:3]) == three
    assert drift_text(changes) == three + " (and 1 more)"
    assert drift_text(changes + [{"key": "e", "from": "x", "to": None}]) == three + " (and 2 more)"


def test_the_time_a_definition_is_stamped_with_is_utc_to_the_second():
    """defined_at/updated_at in a domain's metadata: comparable across hosts in different time zones."""
    stamp = utc_now()
    parsed = datetime.datetime.fromisoformat(stamp)
    assert stamp.endswith("+00:00") and parsed.utcoffset() == datetime.timedelta(0) and parsed.microsecond == 0
