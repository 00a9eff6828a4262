"""A checkpoint's tokenizer: `tokenizer.json` (the `tokenizers` library) + its special tokens."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import tokenizers
import tokenizers.decoders

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable-character table, inverted (char -> byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _token_content(value) -> str | None:
    """tokenizer_config.json writes a special token as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode, decode and name tokens of one checkpoint."""

    def __init__(self, tok: tokenizers.Tokenizer, config: dict):
        self._tok = tok
        self.config = config  # tokenizer_config.json (chat_template included, if any)
        self.special_tokens = {
            name: text for name in SPECIAL_TOKEN_NAMES
            if (text := _token_content(config.get(name))) is not None
        }
        self._byte_level = isinstance(tok.decoder, tokenizers.decoders.ByteLevel)

    @classmethod
    def load(cls, model_dir: str | Path) -> "Tokenizer":
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on a bad file
            raise ValueError(f"{path}: cannot load the tokenizer: {e}") from None
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (model_dir / name).is_file():
                try:
                    config.update(json.loads((model_dir / name).read_text()))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{model_dir / name}: {e}") from None
        return cls(tok, config)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self._tok.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_id(self.special_tokens.get("bos_token"))

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.special_tokens.get("eos_token"))

    def limit_tokens(self, max_tokens: int) -> None:
        """encode returns at most max_tokens + 1 ids: enough to see a prompt is too long."""
        self._tok.enable_truncation(max_tokens + 1)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # encode_batch_fast releases the GIL while the Rust side works (encode does not), so a
        # large prompt tokenized in a thread leaves the event loop free; what still holds the
        # GIL is turning ids into a list (0.14 s for 2M ids here), hence limit_tokens.
        return self._tok.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a UTF-8 character may span several tokens)."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if m := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode()  # sentencepiece's word marker

    def token_text(self, token_id: int) -> str:
        """One token as text for logprobs; a partial UTF-8 character shows as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def detokenizer(self, context_ids: list[int] = ()) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, context_ids)


class IncrementalDetokenizer:
    """Text of a growing token list, released only in whole UTF-8 characters."""

    # Decodes a short window [prefix_offset, len) and emits what it adds beyond the window's
    # already-emitted part [prefix_offset, read_offset): byte-level pieces that join into one
    # character across tokens come out once, whole, and word-start spaces stay right.

    def __init__(self, tokenizer: Tokenizer, context_ids: list[int] = ()):
        self._tok = tokenizer
        self._ids = list(context_ids)[-6:]  # a little prompt context for leading spaces
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def step(self, token_id: int) -> str:
        """Append a token; the new text that is now certain (maybe "")."""
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._tok.decode(self._ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character shows as U+FFFD)."""
        prefix = self._tok.decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._tok.decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix):]
