"""snpvirt.api, the library entry point: arguments a front end got wrong are refused before connecting."""

import pytest

from snpvirt import api
from snpvirt.errors import BadInputError
from tests.conftest import EXAMPLES

NOWHERE = "test+unix:///default?socket=/nonexistent/snpvirt-test-sock"  # connecting here would fail otherwise


@pytest.mark.parametrize("kwargs, fragment", [
    ({"state": "started"}, "state must be one of running, shutoff, present"),
    ({"shutdown_timeout_s": float("nan")}, "shutdown timeout"),
    ({"overrides": ["vcpus"]}, "is not KEY=VALUE"),
])
def test_bad_arguments_are_bad_input_before_any_connection(kwargs, fragment):
    with pytest.raises(BadInputError, match=fragment):
        api.apply(NOWHERE, [EXAMPLES / "web-01.toml"], **kwargs)


def test_a_spec_that_cannot_be_read_is_its_own_failed_item(tmp_path):
    missing = tmp_path / "missing.toml"
    [item] = api.load_specs([missing], allow_debug=False)
    assert item.spec is None and isinstance(item.error, BadInputError) and item.label == str(missing)
