"""Stop strings and the <think> split, fed the same text in every possible way of cutting it."""
import itertools

import pytest

from master.reasoning import ReasoningParser, prompt_opens_think
from master.stop import StopChecker


def cuts(text: str, max_pieces: int = 3):
    """Every way to cut `text` into at most `max_pieces` consecutive pieces."""
    for k in range(max_pieces):
        for points in itertools.combinations(range(1, len(text)), k):
            bounds = (0, *points, len(text))
            yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


def run_stop(stops: list[str], pieces: list[str]) -> tuple[list[str], str | None]:
    checker = StopChecker(stops)
    shown = [checker.feed(p) for p in pieces]
    if checker.stopped is None:
        shown.append(checker.flush())
    return shown, checker.stopped


@pytest.mark.parametrize("text,stops,want,stopped", [
    ("Hello world. Bye", ["world"], "Hello ", "world"),
    ("a<END>b", ["<END>", "b"], "a", "<END>"),  # earliest match wins
    ("xyzzy", ["zz", "yz"], "x", "yz"),
    ("no stop here", ["STOP"], "no stop here", None),
    ("almost STO", ["STOP"], "almost STO", None),  # a held prefix is released at the end
    ("\n\nUser:", ["\n\nUser:"], "", "\n\nUser:"),
])
def test_stop_strings_are_found_across_any_split_and_never_shown(text, stops, want, stopped):
    for pieces in cuts(text):
        shown, hit = run_stop(stops, pieces)
        assert "".join(shown) == want, pieces
        assert hit == stopped
        for s in stops:
            assert all(s not in part for part in shown)


def test_text_that_cannot_start_a_stop_string_is_not_held_back():
    checker = StopChecker(["STOP"])
    assert checker.feed("abc S") == "abc "
    assert checker.feed("T") == ""
    assert checker.feed("x") == "STx"
    assert checker.feed("STO") == ""
    assert checker.feed("P and more") == ""
    assert checker.stopped == "STOP"
    assert checker.feed("later") == ""


@pytest.mark.parametrize("text,opened,want_reasoning,want_content", [
    ("<think>let me see</think>The answer is 4.", False, "let me see", "The answer is 4."),
    ("\n<think>a < b</think>\n\nyes", False, "a < b", "\n\nyes"),
    ("plain answer, no thinking", False, "", "plain answer, no thinking"),
    ("<thinking is fun", False, "", "<thinking is fun"),
    ("still thinking</think>done", True, "still thinking", "done"),
    ("cut off while thinking </thi", True, "cut off while thinking </thi", ""),
    ("x </think", False, "", "x </think"),
])
def test_reasoning_split_is_the_same_for_every_split_of_the_stream(
        text, opened, want_reasoning, want_content):
    for pieces in cuts(text):
        parser = ReasoningParser(in_reasoning=opened)
        parts = [parser.feed(p) for p in pieces] + [parser.flush()]
        assert "".join(r for r, _ in parts) == want_reasoning, pieces
        assert "".join(c for _, c in parts) == want_content, pieces
        shown = "".join(r + c for r, c in parts[:-1])
        assert "</think>" not in shown
        assert "<think>" not in shown or not want_reasoning


def test_a_tag_split_across_deltas_is_held_until_it_is_known():
    parser = ReasoningParser(in_reasoning=True)
    assert parser.feed("hmm </") == ("hmm ", "")
    assert parser.feed("thi") == ("", "")
    assert parser.feed("nk>Hi") == ("", "Hi")
    assert parser.feed("!") == ("", "!")


def test_the_prompt_tells_whether_output_starts_inside_a_think_block():
    assert prompt_opens_think("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_think("<｜User｜>hi<｜Assistant｜>")
    assert not prompt_opens_think("<｜Assistant｜><think>x</think>y<｜User｜>q<｜Assistant｜>")
