"""Multi-turn chat over one KV cache: each turn prefills only its own tokens.

The conversation is the manifest template's "prompt" part for the first turn and its "turn" part after:

    Alice: {turn 1}\\nBob:{reply 1}\\nAlice: {turn 2}\\nBob:{reply 2} ...
    |<------------------- tokens in the KV cache ------------------>| pending

`tokens` are exactly the ids in the cache. A reply that ended at a stop string is cut on text, not on a
token boundary, so the cache keeps the longest run of reply tokens whose text the reply starts with and
the rest of the reply text is `pending`: it is tokenized with the next turn.

When the next turn does not fit, send() raises ContextFullError; with drop_oldest=True the oldest turns
are dropped instead and what is left of the conversation is prefilled again from an empty cache.

python -m runtime.chat [--package DIR] [...] is an interactive loop on stdin (/reset starts over).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import cli
from .backend import CancelToken
from .loop import Generation, GenerationConfig, generate_ids
from .pipeline import TextGenerator, apply_template, template_stops
from .stats import CANCELLED
from .text import clean_text


class ContextFullError(ValueError):
    pass


@dataclass(frozen=True)
class Turn:
    user: str
    reply: str


class ChatSession:
    """A conversation on one TextGenerator. Each call holds the model's lock (TextGenerator.exclusive), so turns
    of several sessions and other generations on the model never interleave; the cache holds one conversation at
    a time, and a turn after something else used it prefills the whole conversation again."""

    def __init__(self, model: TextGenerator, template: str = "chat", drop_oldest: bool = False,
                 system: str | None = None):
        """`system`: a system message, kept at the start of the conversation (the template's "system" part)."""
        for part in ("prompt", "turn"):
            apply_template(model.manifest, template, "", part)  # raises if the template lacks a part
        if system is not None:
            apply_template(model.manifest, template, "", "prompt", system=system)
        self.model, self.template, self.drop_oldest, self.system = model, template, drop_oldest, system
        self.reset()

    def reset(self, wait: bool = True) -> None:
        with self.model.exclusive(wait):
            self.turns: list[Turn] = []
            self.tokens: list[int] = []  # the ids in the KV cache, in order
            self.pending = ""  # conversation text not in the cache yet
            self.model.backend.truncate(0)
            self.model.cache_owner = self

    def _part(self, user: str, first: bool) -> str:
        if first:
            return apply_template(self.model.manifest, self.template, user, "prompt", system=self.system)
        return apply_template(self.model.manifest, self.template, user, "turn")

    def _conversation(self, turns: list[Turn]) -> str:
        return "".join(self._part(t.user, i == 0) + t.reply for i, t in enumerate(turns))

    def _turn_ids(self, user: str) -> list[int]:
        return self.model.encode(self.pending + self._part(user, not self.turns))

    def _make_room(self, user: str, ids: list[int], config: GenerationConfig) -> list[int]:
        """ids of the new turn, after dropping the oldest turns if the conversation would not fit.

        With drop_oldest, the fewest oldest turns are dropped that leave room for the reply as well
        (max_new_tokens, at most half the context); failing that, the fewest that let the turn fit at all.
        """
        capacity = self.model.backend.capacity
        if not self.drop_oldest:
            if len(self.tokens) + len(ids) <= capacity:
                return ids
            if not self.tokens:
                raise ContextFullError(f"the message has {len(ids)} tokens but the context holds {capacity}; "
                                       f"send a shorter message")
            raise ContextFullError(
                f"the conversation has {len(self.tokens)} tokens and the new turn {len(ids)}, but the context "
                f"holds {capacity}; start over (/reset, ChatSession.reset()) or allow dropping the oldest turns "
                f"(--drop-oldest, drop_oldest=True)")
        reserve = min(config.max_new_tokens, capacity // 2)  # room for the reply, so it is not cut at once
        fallback = None
        for start in range(len(self.turns) + 1):
            kept = self.turns[start:]
            turn = ids if start == 0 else self.model.encode(self._conversation(kept) + self._part(user, not kept))
            total = len(turn) + (len(self.tokens) if start == 0 else 0)
            if total + reserve <= capacity:
                return self._keep(start, turn)
            if fallback is None and total <= capacity:
                fallback = (start, turn)
        if fallback is not None:
            return self._keep(*fallback)
        raise ContextFullError(f"the new turn alone has {len(ids)} tokens but the context holds {capacity}; "
                               f"send a shorter message")

    def _keep(self, start: int, ids: list[int]) -> list[int]:
        """Drops the first `start` turns; the rest of the conversation is prefilled again with `ids`."""
        if start:
            kept = self.turns[start:]
            self.turns, self.tokens, self.pending = kept, [], self._conversation(kept)
            self.model.backend.truncate(0)
        return ids

    def send(self, user: str, config: GenerationConfig = GenerationConfig(), *,
             on_text: Callable[[str], None] | None = None, cancel: CancelToken | None = None,
             wait: bool = True) -> Generation:
        """The reply to `user`; the template's stop strings end it. A cancelled turn leaves no trace. `wait`:
        False raises ModelBusyError instead of waiting while another thread generates on the model."""
        if not isinstance(user, str) or not user:
            raise ValueError("the message is empty; type something to say" if isinstance(user, str) else
                             f"the message must be a string, got {type(user).__name__}")
        with self.model.exclusive(wait):
            return self._send(user, config, on_text, cancel)

    def _send(self, user: str, config: GenerationConfig, on_text, cancel) -> Generation:
        model, backend = self.model, self.model.backend
        # The cache was used for something else: the conversation is fed again with this turn, in the same
        # (chunked, cancellable) prefill, and a cancelled turn leaves it to be rebuilt next time.
        rebuild = model.cache_owner is not self
        backend.truncate(0 if rebuild else len(self.tokens))
        model.cache_owner = self
        ids = self._make_room(user, self._turn_ids(user), config)
        prefix = list(self.tokens) if rebuild else []  # empty when _make_room dropped the turns
        stops = tuple(dict.fromkeys(config.stop + template_stops(model.manifest, self.template)))
        config = model.resolve(replace(config, stop=stops))
        out = generate_ids(backend, prefix + ids, config, eos_token_id=model.stop_token_ids, decode=model.decode,
                           on_text=on_text, cancel=cancel, load_s=model.load_s,
                           context=[] if rebuild else self.tokens, suppress=model.suppress)
        if out.finish_reason == CANCELLED:
            if rebuild:
                model.cache_owner = None
            backend.truncate(0 if rebuild else len(self.tokens))
            return out
        fed = out.tokens[:-1]  # the last sampled token never enters the cache (runtime/loop.py)
        keep = len(fed)
        while keep and not out.text.startswith(model.decode(fed[:keep])):
            keep -= 1
        self.pending = out.text[len(model.decode(fed[:keep])):]
        self.tokens += ids + fed[:keep]
        backend.truncate(len(self.tokens))
        self.turns.append(Turn(user, out.text))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m runtime.chat", __doc__.split("\n\n")[0])
    parser.add_argument("--template", default="chat", help="manifest template with a 'turn' part (default: chat)")
    parser.add_argument("--drop-oldest", action="store_true",
                        help="when the context is full, drop the oldest turns instead of stopping with an error")
    cli.add_engine_args(parser)
    cli.add_generation_args(parser)
    return cli.run(parser, argv, repl)


COMMANDS = {"/reset": "start a new conversation", "/quit": "end the chat (also /exit, Ctrl-D or an empty line)",
            "/exit": "end the chat", "/help": "list these commands"}


def command(line: str) -> str | None:
    """The command a line of input is ("/reset"), or None for a message. A line that is one word after a slash is
    a command; "//text" sends the message "/text"."""
    word = line.strip()
    if word.startswith("/") and not word.startswith("//") and len(word) > 1 and not any(c.isspace() for c in word):
        return word
    return None


def repl(args: argparse.Namespace) -> int:
    """The interactive loop of python -m runtime.chat and python -m runtime.generate --chat.

    A turn that cannot be sent (the context is full) is reported and the chat goes on; Ctrl-C during a reply
    cancels that turn only (the conversation is as before it); Ctrl-C at the prompt, Ctrl-D, an empty line or
    /quit end the chat. Lines that are a single /word are commands (/help lists them).
    """
    if sys.stdin is None:
        raise ValueError("standard input is closed, so there are no messages to read; run the chat with a terminal "
                         "or pipe the messages in")
    model = cli.load_model(args)
    config = cli.generation_config(args, model.manifest)  # with the package's own sampling defaults
    session = model.chat(args.template, drop_oldest=args.drop_oldest, system=args.system)
    print(f"chat with {model.manifest.folder} (empty line, /quit or Ctrl-D quits, /reset starts over, /help lists "
          f"commands, Ctrl-C stops a reply)", file=sys.stderr)
    while True:
        try:
            user = clean_text(input("> "))
        except EOFError:
            return 0
        if not user:
            return 0
        name = command(user)
        if name in ("/quit", "/exit"):
            return 0
        if name == "/reset":
            session.reset()
            continue
        if name == "/help":
            for key, text in COMMANDS.items():
                print(f"  {key:<7} {text}", file=sys.stderr)
            print("  //text  send a message that starts with a slash", file=sys.stderr)
            continue
        if name is not None:
            print(f"error: unknown command {name}; /help lists the commands (start a message with // to send a "
                  f"slash)", file=sys.stderr)
            continue
        if user.startswith("//"):
            user = user[1:]
        try:
            with cli.cancel_on_sigint(threading.Event()) as cancel:
                out = session.send(user, config, on_text=cli.write, cancel=cancel)
        except ContextFullError as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            continue
        cli.write("\n")
        if out.finish_reason == CANCELLED:
            print("cancelled: the turn was dropped; type the next one", file=sys.stderr)
            continue
        cli.report(args, out, model.backend.capacity)


if __name__ == "__main__":  # run the imported module's main, so its classes are the ones sessions raise
    from runtime import chat as _chat

    sys.exit(_chat.main())
