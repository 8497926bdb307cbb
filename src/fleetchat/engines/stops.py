"""Stop strings over a stream of text deltas.

A stop string may arrive split over several deltas ("<|im" + "_end|>"), so :class:`StopMatcher`
holds back the tail of the text that could still be the start of a stop string and releases it once
it cannot be. The stop string itself (and anything after it) is never emitted. Reusable by any engine.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Feed text deltas; get back the text that is safe to emit and whether a stop string was hit.

    >>> m = StopMatcher(["END"])
    >>> m.feed("hello E")
    ('hello ', False)
    >>> m.feed("ND and more")
    ('', True)
    """

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add ``delta``; return ``(text_to_emit, stopped)``. After a stop, further input is ignored."""
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        text = self._held + delta
        # earliest occurrence of any stop string wins; on a tie at the same index, the longest
        best: tuple[int, int] | None = None
        for stop in self.stops:
            i = text.find(stop)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(stop) > best[1])):
                best = (i, len(stop))
                self.matched = stop
        if best is not None:
            self.stopped = True
            self._held = ""
            return text[: best[0]], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, for when the stream ends for another reason (length, eos)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
