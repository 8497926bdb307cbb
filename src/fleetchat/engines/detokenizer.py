"""Token ids to text deltas, one step at a time, never emitting broken UTF-8.

A character may span several tokens (byte-level BPE splits Chinese characters and emoji into byte
tokens), and SentencePiece decodes a token differently depending on its left neighbour (the leading
space). :class:`IncrementalDetokenizer` therefore decodes a small sliding window of ids twice — the
part already emitted and the part with the new ids — and emits the difference only once it does not
end in an incomplete character (U+FFFD). This is the offsets scheme of vLLM / TGI. Reusable by any
engine holding a Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"
# ids of the prompt kept as left context so the first generated token decodes as it would in place
_CONTEXT_TOKENS = 5


def fast_decoder(tokenizer: Any, skip_special_tokens: bool = True):
    """A ``decode(ids) -> str`` function for ``tokenizer``, preferring the Rust ``tokenizers`` object.

    The Rust decoder skips the Python-side clean-up of spaces, which would make windowed decodes
    disagree with each other.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "decode"):
        return lambda ids: backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )


class IncrementalDetokenizer:
    """``add(ids) -> str`` returns the text those ids complete; ``flush()`` ends the stream.

    The concatenation of every ``add`` result and ``flush()`` equals the decode of all generated
    ids (minus a trailing incomplete character when the stream stops in the middle of one).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
        decode: Any = None,
    ) -> None:
        self._decode = decode or fast_decoder(tokenizer, skip_special_tokens)
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix = 0  # start of the window that gives the left context
        self._read = len(self._ids)  # everything before this has been emitted

    def add(self, token_ids: Sequence[int]) -> str:
        """Append generated ids; return the newly completed text ('' while a character is partial)."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            # keep the list short: only the window from _prefix on is ever read again
            if self._prefix > 64:
                del self._ids[: self._prefix]
                self._read -= self._prefix
                self._prefix = 0
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end of the stream, without a trailing broken character."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :].rstrip(_REPLACEMENT) if len(new_text) > len(prefix_text) else ""
