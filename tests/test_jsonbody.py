"""Large request bodies are parsed a piece at a time (control/jsonbody.py), giving the same
document and the same refusals as json.loads, and their nesting is checked a slice at a time
(control/limits.py) with the same result as one pass over any JSON text (and any text without
backslashes); the collector's pauses nest."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_imds.collector import paused, release
from ecs_imds.control import jsonbody, limits

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=30)


@given(values, st.sampled_from([None, 0, 2]), st.booleans())
def test_the_same_document_as_json_loads(value: Any, indent: int | None, ascii_: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_)
    assert jsonbody.loads(text) == json.loads(text)
    wrapped = json.dumps({"a": [value, value], "b": value}, indent=indent)
    assert jsonbody.loads(wrapped) == json.loads(wrapped)


@pytest.mark.parametrize("text", [
    "", " ", "{", "}", '{"a"}', '{"a" 1}', '{"a": 1,}', '{"a": 1 "b": 2}', '{1: 2}',
    '{"a": [1, 2}', '{"a": [1 2]}', '{"a": [1,]}', '{"a": []] }', '{"a": 1} x', '{} {}',
    '{"a": [1, 2], "b": tru}', '{"a": "\\x"}', '{"a": "line\nbreak"}', '[1, 2', '{"a": [',
])
def test_what_json_loads_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonbody.loads(text)


def test_a_large_body_is_parsed_on_a_thread_with_the_collector_paused() -> None:
    doc = {"defaults": {"region-id": "cn-hangzhou"},
           "instances": [{"instance-id": f"i-{n:06d}", "tags": {"n": str(n)}}
                         for n in range(3000)]}
    body = json.dumps(doc).encode()
    assert len(body) > jsonbody.PARSE_ON_LOOP
    seen: list[bool] = []
    real = jsonbody.loads

    def watched(text: str) -> Any:
        seen.append(gc.isenabled() or threading.current_thread() is threading.main_thread())
        return real(text)

    jsonbody.loads = watched  # type: ignore[assignment]
    try:
        assert asyncio.run(jsonbody.parse(body)) == doc
        assert asyncio.run(jsonbody.parse(b'{"small": [1, 2]}')) == {"small": [1, 2]}
    finally:
        jsonbody.loads = real  # type: ignore[assignment]
    assert seen == [False]  # the large one only: off the main thread, collector paused
    assert gc.isenabled()
    assert asyncio.run(jsonbody.parse("{\"utf-16\": 1}".encode("utf-16"))) == {"utf-16": 1}


def test_pauses_nest_and_the_collector_runs_again_after_the_last() -> None:
    assert gc.isenabled()
    with paused():
        assert not gc.isenabled()
        with paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()



def test_a_large_list_is_released_an_item_at_a_time() -> None:
    inner = [{"instance-id": f"i-{n}"} for n in range(1000)]
    items = list(inner)
    release(items)
    assert items == [] and len(inner) == 1000  # emptied; what else holds its items is kept

def _brackets_in_one_pass(body: bytes) -> bytes:
    """The reference: every string cut out by one regex (a string left open runs to the end
    of the text), then every byte but the brackets."""
    strings = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
    return strings.sub(b"", body).translate(None, bytes(b for b in range(256)
                                                        if b not in b"[]{}"))


# Strings full of what the scan must not take for structure: quotes, backslashes (runs of
# them, escaping a quote or another backslash), brackets.
_tricky = st.text(alphabet='"\\[]{}a/\n', max_size=12) | st.text(max_size=5)
_tricky_values = st.recursive(
    st.none() | st.integers() | _tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_tricky, inner, max_size=4),
    max_leaves=30)


@given(_tricky_values, st.sampled_from([1, 2, 3, 5, 16, limits.SCAN_SLICE]), st.booleans())
def test_brackets_of_json_a_slice_at_a_time_are_those_of_one_pass(
        value: Any, size: int, ascii_: bool) -> None:
    """Slices of any size, cut anywhere (in a run of backslashes, between an escape and a
    quote, inside a string holding brackets): the brackets of one pass."""
    body = json.dumps(value, ensure_ascii=ascii_).encode()
    assert limits.brackets_of(body, size) == _brackets_in_one_pass(body)


@given(st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"a", b"\n", b":",
                                 b"x" * 5000, b'"{[', b'"[]"']), max_size=2000),
       st.sampled_from([1, 7, 4096, limits.SCAN_SLICE]))
def test_brackets_of_any_text_without_escapes_are_those_of_one_pass(
        pieces: list[bytes], size: int) -> None:
    """Not JSON (strings left open, brackets that do not pair up) but without backslashes:
    still the brackets of one pass."""
    body = b"".join(pieces)
    assert limits.brackets_of(body, size) == _brackets_in_one_pass(body)


def test_a_fleet_file_nests_six_levels() -> None:
    body = json.dumps({"instances": [{"instance-id": f"i-{n}", "tags": {"k": "{[\"]}\\"}}
                                     for n in range(5000)]}).encode()
    assert limits.brackets_of(body, 4096) == _brackets_in_one_pass(body)
    assert not limits.nested_deeper(body) and limits.nested_deeper(b"[" * 40 + b"]" * 40)
