"""Our chat-template rendering against transformers' apply_chat_template, token for token."""
import functools

import pytest
import transformers

from transformers.utils.chat_template_utils import render_jinja_template

from http_fakes import DEEPSEEK_DIR, make_model_dir
from master.bundle import ModelBundle
from master.chat_template import ChatTemplate, ChatTemplateError
from master.tokenizer import Tokenizer

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 答えて 🙂"},
    ],
    "assistant_with_think": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<think>greet back</think>Hello."},
        {"role": "user", "content": "bye"},
    ],
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "type": "function", "id": "call_1",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
]


@pytest.fixture(scope="module", params=["deepseek", "deepseek_r1", "qwen"])
def model_dir(request, tmp_path_factory):
    kind = "qwen" if request.param == "qwen" else "deepseek"
    return make_model_dir(tmp_path_factory.mktemp(request.param), kind,
                          r1_open_think=request.param == "deepseek_r1")


@pytest.fixture(scope="module")
def reference(model_dir):
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def template(model_dir) -> ChatTemplate:
    return ModelBundle.load(model_dir).chat_template


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendering_matches_transformers(reference, template, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    want_text = reference.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=add_generation_prompt)
    want_ids = reference.apply_chat_template(messages, tokenize=True,
                                             add_generation_prompt=add_generation_prompt)
    want_ids = want_ids["input_ids"] if isinstance(want_ids, dict) or hasattr(
        want_ids, "keys") else want_ids
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    assert text == want_text
    assert template.encode(text) == list(want_ids)


def test_tool_calls_render_like_transformers(tmp_path):
    reference = transformers.AutoTokenizer.from_pretrained(str(DEEPSEEK_DIR))
    template = ChatTemplate.load(DEEPSEEK_DIR, _tokenizer())
    want = reference.apply_chat_template(TOOL_CONVERSATION, tokenize=False,
                                         add_generation_prompt=True)
    got = template.render(TOOL_CONVERSATION, add_generation_prompt=True)
    assert got == want and "get_weather" in got and "<｜tool▁outputs▁end｜>" in got
    # OpenAI clients send content null with tool calls; the template's `is none` branch takes it
    # (transformers drops the key there and fails).
    with_null = [dict(m) for m in TOOL_CONVERSATION]
    with_null[1]["content"] = None
    assert template.render(with_null, add_generation_prompt=True) == want


def test_bos_appears_once():
    template = ChatTemplate.load(DEEPSEEK_DIR, _tokenizer())
    ids = template.encode(template.render(CONVERSATIONS["single"]))
    assert ids[0] == _tokenizer().bos_token_id
    assert ids.count(_tokenizer().bos_token_id) == 1


@functools.cache
def _tokenizer() -> Tokenizer:
    return Tokenizer.load(DEEPSEEK_DIR)


def _template(source: str) -> ChatTemplate:
    return ChatTemplate({"default": source}, _tokenizer())


HELPERS_TEMPLATE = (
    "{% set ns = namespace(n=0) %}"
    "{% for m in messages %}\n"
    "  {% if m.role not in ['user'] %}{{ raise_exception('only users here') }}{% endif %}\n"
    "  {% set ns.n = ns.n + 1 %}\n"
    "  [{{ m.content | tojson }}|{{ m.thinking }}]\n"
    "{% endfor %}{{ ns.n }}{{ tools | tojson(indent=1) }}{{ eos_token }}{{ bos_token }}")


def test_hugging_face_helpers_and_whitespace_semantics():
    messages = [{"role": "user", "content": "héllo <b>", "reasoning_content": "hm"}]
    tools = [{"type": "function", "function": {"name": "ü"}}]
    want = render_jinja_template([messages], tools=tools, chat_template=HELPERS_TEMPLATE,
                                 bos_token="<｜begin▁of▁sentence｜>",
                                 eos_token="<｜end▁of▁sentence｜>")[0][0]
    got = _template(HELPERS_TEMPLATE).render(messages, tools=tools)
    assert got == want and '"héllo <b>"' in got and "|hm]" in got
    with pytest.raises(ChatTemplateError, match="only users here"):
        _template(HELPERS_TEMPLATE).render([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize("source", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{% set x = messages.append(1) %}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
])
def test_the_sandbox_refuses_unsafe_templates_with_a_clear_error(source):
    with pytest.raises(ChatTemplateError):
        _template(source).render([{"role": "user", "content": "x"}])


def test_a_broken_template_is_one_readable_line():
    with pytest.raises(ValueError, match=r"chat template: .*line 1"):
        _template("{% for m in messages %}")
