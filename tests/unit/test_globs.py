"""policy.fields.glob_match answers what fnmatch.fnmatchcase answers, for any value and
pattern (it only skips compiling patterns without a wildcard)."""

import fnmatch

from hypothesis import given, settings, strategies as st

from chalicelib.policy.fields import glob_match

ALPHABET = st.sampled_from(list("ab-/:*?[]!\\.\n") + ["é", "\u0662"])


@settings(max_examples=3000, deadline=None)
@given(st.text(ALPHABET, max_size=8), st.text(ALPHABET, max_size=8))
def test_glob_match_is_fnmatchcase(value, pattern):
    assert glob_match(value, pattern) == fnmatch.fnmatchcase(value, pattern)


def test_exact_patterns_are_compared_not_compiled():
    fnmatch._compile_pattern.cache_clear()
    assert glob_match("arn:aws:iam::123456789012:role/demo-node", "arn:aws:iam::123456789012:role/demo-node")
    assert not glob_match("web", "Web")
    assert not glob_match("web\n", "web")
    assert fnmatch._compile_pattern.cache_info().currsize == 0
    assert glob_match("web-1", "web-*") and fnmatch._compile_pattern.cache_info().currsize == 1
