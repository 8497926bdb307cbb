"""StopMatcher: stop strings split across deltas, held-back text, never emitting the stop string."""

from __future__ import annotations

import pytest

from fleetchat.engines.stops import StopMatcher


def run(matcher: StopMatcher, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for d in deltas:
        text, stopped = matcher.feed(d)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_no_stops_passes_text_through() -> None:
    m = StopMatcher()
    assert m.feed("hello") == ("hello", False)
    assert m.flush() == ""


def test_stop_inside_one_delta() -> None:
    assert run(StopMatcher(["END"]), ["abc END def"]) == ("abc ", True)


@pytest.mark.parametrize("split", [1, 2, 3, 4, 5, 6, 7])
def test_stop_split_over_deltas(split: int) -> None:
    text = "Paris<|im_end|>ignored"
    deltas = [text[i : i + split] for i in range(0, len(text), split)]
    assert run(StopMatcher(["<|im_end|>"]), deltas) == ("Paris", True)


def test_partial_prefix_is_held_then_released() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("go ST") == ("go ", False)  # "ST" could start STOP
    assert m.feed("ay") == ("STay", False)  # it did not
    assert m.feed("S") == ("", False)
    assert m.flush() == "S"  # stream ended for another reason: held text is emitted


def test_earliest_stop_wins() -> None:
    assert run(StopMatcher(["b", "a"]), ["xxabc"]) == ("xx", True)
    m = StopMatcher(["ab", "abc"])
    assert m.feed("zabcd") == ("z", True)
    assert m.matched == "abc"  # longest at the same position


def test_after_stop_everything_is_ignored() -> None:
    m = StopMatcher(["x"])
    assert m.feed("ax") == ("a", True)
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_held_text_is_never_a_stop() -> None:
    out, stopped = run(StopMatcher(["\n\n"]), ["line\n", "\n", "next"])
    assert (out, stopped) == ("line", True)
