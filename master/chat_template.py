"""The checkpoint's Jinja2 chat template, rendered the way Hugging Face's apply_chat_template does."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from master.tokenizer import Tokenizer


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or failed to render."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # HF's tojson: unlike Jinja's built-in, no HTML escaping and non-ASCII kept as is.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """namespace() that refuses underscore names, so a template cannot reach CPython internals."""

    def __init__(*args, **kwargs):  # Jinja's signature trick: `namespace(self=...)` still works
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


def _alias_reasoning(messages: list[dict]) -> list[dict]:
    """Templates read a message's reasoning as reasoning_content (or thinking); accept all three."""
    out = []
    for m in messages:
        reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
        out.append(m if reasoning is None else
                   {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


def find_template_sources(model_dir: str | Path, tokenizer_config: dict) -> dict[str, str]:
    """Named templates: `chat_template.jinja` or tokenizer_config.json's chat_template."""
    jinja_file = Path(model_dir) / "chat_template.jinja"
    if jinja_file.is_file():
        return {"default": jinja_file.read_text()}
    source = tokenizer_config.get("chat_template")
    if isinstance(source, str):
        return {"default": source}
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        return {t["name"]: t["template"] for t in source if "name" in t and "template" in t}
    return {}


class ChatTemplate:
    """Messages -> prompt text -> token ids, with the tokenizer's special tokens in scope."""

    def __init__(self, sources: dict[str, str], tokenizer: Tokenizer):
        env = _environment()
        try:
            self._templates = {name: env.from_string(src) for name, src in sources.items()}
            # names the templates read from their scope ("tools" = it renders tool definitions)
            self.variables = frozenset().union(
                *(jinja2.meta.find_undeclared_variables(env.parse(s)) for s in sources.values()))
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat template: {e.message} (line {e.lineno})") from None
        self.sources = sources
        self._tokenizer = tokenizer

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer: Tokenizer) -> "ChatTemplate | None":
        """None when the checkpoint ships no chat template (a base model)."""
        sources = find_template_sources(model_dir, tokenizer.config)
        return cls(sources, tokenizer) if sources else None

    def mentions(self, text: str) -> bool:
        return any(text in src for src in self.sources.values())

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **kwargs) -> str:
        name = "tool_use" if tools and "tool_use" in self._templates else "default"
        template = self._templates.get(name) or next(iter(self._templates.values()))
        scope = {**self._tokenizer.special_tokens, **kwargs}
        try:
            return template.render(messages=_alias_reasoning(messages), tools=tools, documents=None,
                                   add_generation_prompt=add_generation_prompt, **scope)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(e.message or str(e)) from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from None

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt; the template wrote any BOS, so none is added."""
        return self._tokenizer.encode(prompt, add_special_tokens=False)
