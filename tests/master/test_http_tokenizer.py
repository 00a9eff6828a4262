"""Incremental detokenization on the real DeepSeek and Qwen tokenizers."""
import pytest

from http_fakes import DEEPSEEK_DIR, QWEN_DIR
from master.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox.",
    "你好，世界。深度求索的模型会说中文。",
    "emoji 🤖🚀👩‍👩‍👧 and accents: café, naïve, Zürich",
    "mixed\n\tcode: def f(x):\n    return x ** 2  # ∑ ∫ √",
    "日本語のテキスト and 한국어 텍스트 🎉",
]


@pytest.fixture(scope="module", params=["deepseek", "qwen"])
def tok(request) -> Tokenizer:
    return Tokenizer.load(DEEPSEEK_DIR if request.param == "deepseek" else QWEN_DIR)


def stream_text(tok: Tokenizer, ids: list[int]) -> list[str]:
    detok = tok.detokenizer()
    pieces = [detok.step(t) for t in ids]
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_the_full_decode_and_never_has_broken_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    pieces = stream_text(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_a_character_split_over_tokens_comes_out_once_whole(tok):
    text = "🤖🚀👩‍👩‍👧"
    ids = tok.encode(text, add_special_tokens=False)
    partial = [t for t in ids if not _is_utf8(tok.token_bytes(t))]
    assert partial, "the test needs a token holding part of a character"
    assert b"".join(tok.token_bytes(t) for t in ids) == text.encode()
    pieces = stream_text(tok, ids)
    assert "".join(pieces) == text
    assert "" in pieces  # something was held back until its character was complete


def test_token_bytes_rebuild_the_text_exactly(tok):
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(tok.token_bytes(t) for t in ids) == text.encode()


def test_special_tokens_are_not_shown_and_the_stream_ends_with_held_bytes_flushed():
    tok = Tokenizer.load(DEEPSEEK_DIR)
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1
    ids = tok.encode("ok", add_special_tokens=False)
    assert "".join(stream_text(tok, [0, *ids, 1])) == "ok"
    # A generation cut off in the middle of a character: the tail shows as U+FFFD at the end.
    robot = tok.encode("🤖", add_special_tokens=False)
    assert len(robot) > 1
    pieces = stream_text(tok, robot[:-1])
    assert pieces[:-1] == [""] * (len(robot) - 1) and pieces[-1].endswith("\ufffd")


def test_leading_space_of_the_first_output_token_survives_with_prompt_context():
    tok = Tokenizer.load(DEEPSEEK_DIR)
    prompt = tok.encode("Say hi:", add_special_tokens=False)
    out = tok.encode(" hello there", add_special_tokens=False)
    detok = tok.detokenizer(prompt)
    assert "".join(detok.step(t) for t in out) + detok.flush() == " hello there"


def test_a_bad_tokenizer_file_is_one_readable_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: cannot load the tokenizer"):
        Tokenizer.load(tmp_path)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False
