"""Tokens -> text while generating: an incremental UTF-8-safe detokenizer and a stop-string matcher.

A byte-level BPE token can end inside a multibyte character (an emoji is four byte tokens in a small
vocabulary), and a stop string such as "\\nAlice:" can span several tokens. Both are handled by holding
text back until it is safe to show:

    tokens --IncrementalDecoder--> complete characters --StopMatcher--> text the user sees
              holds a token run      holds a tail that could start a stop string
              ending mid-character
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character

Decode = Callable[[Sequence[int]], str]


def clean_text(text: str) -> str:
    """User text as valid Unicode: bytes that were not UTF-8 (Python keeps them in argv and stdin as lone
    surrogates) and any other lone surrogate become U+FFFD, as a lenient UTF-8 decoder would show them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "replace").decode("utf-8", "replace")


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist; copy the whole model package")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"tokenizer {path} cannot be read ({e}); copy the package again or re-export it") from None


class IncrementalDecoder:
    """Turns tokens pushed one by one into text, emitting only whole characters.

    The text of the tokens from `prefix` on is decoded and compared with the text up to `read`; only the
    difference is new. Decoding from a few tokens back, not from the new token alone, keeps decoders that
    treat a sequence's first token specially (leading-space stripping) correct. Offsets only advance to
    positions where the decoded text ended cleanly, so they always sit on character boundaries.
    """

    def __init__(self, decode: Decode, context: Sequence[int] = ()):
        self.decode = decode
        self.ids: list[int] = list(context)  # context: prompt tokens, decoded for reference, never emitted
        self.prefix = self.read = len(self.ids)
        if self.ids:
            self.prefix = max(0, len(self.ids) - 4)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Text still held back (an incomplete character at the very end decodes as U+FFFD, as a full decode would)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could be the start of one."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of `text` (plus what was held) that is safe to show; sets `stopped` at a stop string."""
        if self.stopped:
            return ""
        buffer = self.held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buffer[:min(hits)]
        keep = self._partial(buffer)
        self.held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """Text held back at the end of generation: it did not turn into a stop string, so it is shown."""
        held, self.held = self.held, ""
        return "" if self.stopped else held

    def _partial(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that is a proper prefix of a stop string."""
        for n in range(min(len(buffer), max((len(s) for s in self.stops), default=0) - 1), 0, -1):
            tail = buffer[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


class TextStream:
    """IncrementalDecoder then StopMatcher: push a token, get the text that may be shown now."""

    def __init__(self, decode: Decode, stops: Iterable[str] = (), context: Sequence[int] = ()):
        self.decoder = IncrementalDecoder(decode, context)
        self.matcher = StopMatcher(stops)
        self.text = ""  # everything emitted so far

    @property
    def stopped(self) -> bool:
        return self.matcher.stopped

    def push(self, token: int) -> str:
        return self._emit(self.matcher.push(self.decoder.push(token)))

    def flush(self) -> str:
        piece = self.matcher.push(self.decoder.flush())
        return self._emit(piece + self.matcher.flush())

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece
