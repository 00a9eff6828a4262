"""What the HTTP layer needs from a checkpoint directory: tokenizer, chat template, defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.config import GenerationDefaults, read_json
from master.chat_template import ChatTemplate
from master.tokenizer import Tokenizer
from master.tool_formats import ToolFormat, choose_format


@dataclass(frozen=True)
class ModelBundle:
    """Tokenizer + chat template + generation defaults + context length of one checkpoint."""

    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    max_model_len: int  # prompt + output tokens, at most
    vocab_size: int  # token ids below this are both decodable and embeddable
    sampling_defaults: dict = field(default_factory=dict)  # request field -> default value
    default_max_tokens: int | None = None  # generation_config's max_new_tokens, if any
    stop_token_ids: tuple[int, ...] = ()  # EOS ids: end of a sequence, never shown as text
    reasoning: bool = False  # split <think>…</think> into reasoning_content
    tool_format: ToolFormat | None = None  # how this model writes tool calls

    @classmethod
    def load(cls, model_dir: str | Path, max_model_len: int = 0,
             reasoning_parser: str = "auto", tool_call_parser: str = "auto") -> "ModelBundle":
        """max_model_len 0 = config.json's max_position_embeddings."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ValueError(f"model_dir: {model_dir} is not a directory")
        tokenizer = Tokenizer.load(model_dir)
        template = ChatTemplate.load(model_dir, tokenizer)
        gen = GenerationDefaults.from_dir(model_dir)
        model_config = read_json(model_dir / "config.json")
        context = model_config.get("max_position_embeddings", 0)
        if max_model_len <= 0:
            max_model_len = int(context)
        if max_model_len <= 0:
            raise ValueError(f"{model_dir / 'config.json'}: no max_position_embeddings; "
                             "set max_model_len")
        tokenizer.limit_tokens(max_model_len)  # a longer prompt is refused whatever its length
        eos = list(gen.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        reasoning = reasoning_parser == "auto" and template is not None and (
            template.mentions("<think>") or template.mentions("</think>"))
        return cls(
            tokenizer=tokenizer,
            chat_template=template,
            max_model_len=max_model_len,
            vocab_size=min(tokenizer.vocab_size,
                           int(model_config.get("vocab_size") or tokenizer.vocab_size)),
            sampling_defaults=dict(gen.sampling),
            default_max_tokens=gen.max_new_tokens,
            stop_token_ids=tuple(dict.fromkeys(eos)),
            reasoning=reasoning,
            tool_format=choose_format(
                tool_call_parser, lambda t: tokenizer.token_id(t) is not None,
                lambda t: template is not None and template.mentions(t)),
        )
