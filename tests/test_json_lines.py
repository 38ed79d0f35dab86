"""The step-line parser must agree with json.loads exactly: same values, same failures."""

import json

from hypothesis import given, settings, strategies as st
from fuzzing import examples

from rldskit.formats.capture_dir import _loads_line

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def _outcome(f, line):
    try:
        return "ok", json.dumps(f(line), sort_keys=True)
    except Exception as e:  # noqa: BLE001 - we compare the failure itself
        return "err", type(e).__name__, str(e)


@settings(max_examples=examples(300), deadline=None)
@given(json_values, st.sampled_from(["", " ", "\t", "\r", "x", ",{}", "\x0b", "\u00a0"]),
       st.sampled_from(["", " ", "\ufeff", "\n"]))
def test_matches_json_loads_on_valid_and_padded_lines(value, suffix, prefix):
    line = prefix + json.dumps(value) + suffix
    assert _outcome(_loads_line, line) == _outcome(json.loads, line)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_matches_json_loads_on_arbitrary_text(line):
    assert _outcome(_loads_line, line) == _outcome(json.loads, line)
