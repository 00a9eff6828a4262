"""The tool-call parsers on model text, fed whole and split at every character."""
import json

import pytest

from master.tool_formats import DS_CALL_BEGIN, DS_CALL_END, DS_CALLS_BEGIN, DS_CALLS_END, \
    DS_SEP, FORMATS, choose_format
from master.tool_parser import ForcedToolParser, ToolCallParser

DS = FORMATS["deepseek_v3"]
HERMES = FORMATS["hermes"]


def ds_call(name, args):
    return f"{DS_CALL_BEGIN}function{DS_SEP}{name}\n```json\n{json.dumps(args)}\n```{DS_CALL_END}"


DS_TWO = (f"Let me check.{DS_CALLS_BEGIN}{ds_call('get_weather', {'city': 'Paris'})}\n"
          f"{ds_call('get_time', {'tz': 'CET'})}{DS_CALLS_END}")
HERMES_TWO = ('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
              '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n'
              '</tool_call>')
TWO = [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]


def run(parser, pieces):
    content, calls = "", []
    for p in pieces:
        c, new = parser.feed(p)
        content, calls = content + c, calls + new
    c, new = parser.finish()
    return content + c, calls + new


def chunkings(text):
    yield [text]  # begin and end of every call in one delta
    yield list(text)  # one character at a time
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]


@pytest.mark.parametrize("fmt,text,prefix", [(DS, DS_TWO, "Let me check."),
                                             (HERMES, HERMES_TWO, "Sure.\n")])
def test_two_calls_found_however_the_text_is_split(fmt, text, prefix):
    for pieces in chunkings(text):
        content, calls = run(ToolCallParser(fmt), pieces)
        assert content.strip() == prefix.strip(), pieces
        assert [(c.name, json.loads(c.arguments)) for c in calls] == TWO
        assert [c.index for c in calls] == [0, 1]
        assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id


def test_deepseek_v31_call_body_and_unicode_markers():
    assert DS_CALLS_BEGIN == "<\uff5ctool\u2581calls\u2581begin\uff5c>"
    text = (f'{DS_CALLS_BEGIN}{DS_CALL_BEGIN}get_weather{DS_SEP}{{"city": "Paris"}}'
            f'{DS_CALL_END}{DS_CALLS_END}')
    content, calls = run(ToolCallParser(DS), [text])
    assert content == "" and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}


@pytest.mark.parametrize("fmt,text", [
    (DS, f"{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}f\n```json\n{{bad json\n```{DS_CALL_END}{DS_CALLS_END}"),
    (DS, f"{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}f\n```json\n{{\"a\": 1"),  # unterminated
    (DS, f"ok {DS_CALLS_BEGIN}"),  # a section with nothing after it
    (HERMES, '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>'),  # invalid JSON
    (HERMES, '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>'),  # not an object
    (HERMES, 'text <tool_call>\n{"name": "f", "argu'),  # unterminated
    (HERMES, "a < b and <tool_c"),  # a marker's prefix that never completes
])
def test_malformed_output_is_plain_content(fmt, text):
    for pieces in ([text], list(text)):
        content, calls = run(ToolCallParser(fmt), pieces)
        assert calls == [] and content == text


def test_a_malformed_call_beside_a_good_one_keeps_the_good_one():
    bad = '<tool_call>\n{"name": "g", "arguments": {oops}}\n</tool_call>'
    text = HERMES_TWO[:HERMES_TWO.index("</tool_call>") + len("</tool_call>")] + "\n" + bad
    content, calls = run(ToolCallParser(HERMES), [text])
    assert [c.name for c in calls] == ["get_weather"] and bad in content


def test_parallel_false_keeps_only_the_first_call():
    content, calls = run(ToolCallParser(HERMES, parallel=False), [HERMES_TWO])
    assert [c.name for c in calls] == ["get_weather"]


def test_forced_parsers_read_named_arguments_and_required_arrays():
    content, calls = run(ForcedToolParser("get_weather"), ['{"city":', ' "Paris"}'])
    assert content == "" and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    text = json.dumps([{"name": n, "parameters": a} for n, a in TWO])
    content, calls = run(ForcedToolParser(None), list(text))
    assert [(c.name, json.loads(c.arguments)) for c in calls] == TWO
    assert run(ForcedToolParser(None), ['{"cut off'])[0] == '{"cut off'


def test_format_chosen_by_checkpoint_or_setting():
    ds_vocab = {DS_CALLS_BEGIN}.__contains__
    assert choose_format("auto", ds_vocab, lambda _t: False) is DS
    assert choose_format("auto", {"<|im_start|>"}.__contains__, lambda _t: False) is HERMES
    assert choose_format("auto", lambda _t: False, lambda _t: False) is None
    assert choose_format("hermes", ds_vocab, lambda _t: False) is HERMES
    assert choose_format("none", ds_vocab, lambda _t: True) is None
