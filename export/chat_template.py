"""The checkpoint's own chat template (tokenizer_config.json "chat_template", Jinja), turned into the plain
parts the runtime and the Android engine fill in without Jinja:

    prompt  the first turn:            render([user {prompt}], add_generation_prompt)
    turn    every later turn:          what render([user, assistant, user {prompt}]) adds after the reply
    system  a first turn with system:  render([system {system}, user {prompt}], add_generation_prompt)

Phi-3:       <|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n       turn <|end|>\\n<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n
Phi-4-mini:  <|user|>{prompt}<|end|><|assistant|>               turn <|end|><|user|>{prompt}<|end|><|assistant|>

Two things a template may do with the message text are kept as flags the runtimes apply (runtime/pipeline.py
apply_template, Manifest.kt, generator.js):

    "trim": true                the user's and the system's text are stripped of surrounding whitespace first
                                (Jinja's `| trim`: Python's str.strip(), runtime/manifest.py's TRIM_CHARACTERS)
    "omit_empty_system": true   an empty system message is left out (Phi-3.5's `if message['content']`)

The template is rendered in Jinja's sandbox, as transformers' apply_chat_template does, in a child process with a
deadline (RENDER_SECONDS), a memory limit and a cap on each rendering's size, so a template that loops, recurses or
floods cannot hang or exhaust the export. The parts are accepted only if assembling them reproduces the template's
own rendering of several conversations, including messages with surrounding whitespace, braces, an empty system
message and replies that start or end with spaces. Whatever goes wrong (a Jinja error, the deadline, the memory
limit, a part longer than the context, a template the parts cannot express) has one rule: the package is written
without a "chat" template and one line on stderr says why (phi-1.5's Alice/Bob format would be wrong for an
instruct model, so it is never the fallback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.manifest import fill_template

_USER, _USER2, _USER3 = "PHIEDGEUSERONE", "PHIEDGEUSERTWO", "PHIEDGEUSERTHREE"
_REPLY, _REPLY2, _SYSTEM = "PHIEDGEREPLYONE", "PHIEDGEREPLYTWO", "PHIEDGESYSTEM"
RENDER_SECONDS = 10.0  # for all the renderings of one template, process start included
RENDER_MEMORY = 1 << 30  # address space of the rendering process beyond the interpreter's own
MAX_RENDER_CHARS = 1 << 20  # one rendering; a template that writes more is refused


class TemplateError(ValueError):
    pass


def read_chat_template(checkpoint: Path) -> tuple[str | None, dict[str, Any]]:
    """(the Jinja chat template or None, tokenizer_config.json) of a checkpoint folder."""
    path = Path(checkpoint) / "tokenizer_config.json"
    if not path.is_file():
        return None, {}
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the checkpoint's source") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise TemplateError(f"{path}'s chat_template list has no template named 'default' (it has "
                                f"{', '.join(map(str, named)) or 'none'})")
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise TemplateError(f"{path}: chat_template is neither a string nor a list of named templates")
    return template, config if isinstance(config, dict) else {}


def _special(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def renderer(template: str, tokenizer_config: dict[str, Any]):
    """messages, add_generation_prompt -> text, as transformers' apply_chat_template(tokenize=False); a rendering
    longer than MAX_RENDER_CHARS raises TemplateError as soon as it gets there."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    specials = {k: _special(tokenizer_config, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}

    def render(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        out, size = [], 0
        for piece in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt, **specials):
            out.append(piece)
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateError(f"the chat template writes more than {MAX_RENDER_CHARS} characters for a short "
                                    f"conversation")
        return "".join(out)

    return render


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def chat_parts(template: str, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """{"prompt", "turn"[, "system"][, "trim"][, "omit_empty_system"]}; TemplateError (a ValueError) if the parts
    cannot express the template. Renders in this process: package_templates() calls it in a bounded child."""
    import jinja2

    render = renderer(template, tokenizer_config)
    try:
        first = render([_user(_USER)])
        two = render([_user(_USER), _assistant(_REPLY), _user(_USER2)])
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template cannot be rendered ({e})") from None
    if first.count(_USER) != 1:
        raise TemplateError("the chat template does not show the user's message once")
    head = first + _REPLY
    if not two.startswith(head) or two.count(_USER2) != 1:
        raise TemplateError("the chat template does not continue a conversation by appending to it (a later turn "
                            "changes what came before)")
    parts: dict[str, Any] = {"prompt": first.replace(_USER, "{prompt}"),
                             "turn": two[len(head):].replace(_USER2, "{prompt}")}
    try:
        system = render([_system(_SYSTEM), _user(_USER)])
    except jinja2.TemplateError:
        system = None  # the template takes no system message
    if system is not None and system.count(_SYSTEM) == 1 and system.count(_USER) == 1 and \
            system.index(_SYSTEM) < system.index(_USER):
        parts["system"] = system.replace(_SYSTEM, "{system}").replace(_USER, "{prompt}")
        if render([_system(""), _user(_USER)]) == first:  # Phi-3.5: a system block only if it has content
            parts["omit_empty_system"] = True
    if render([_user(f" \n\t{_USER}  \n")]) == first:
        parts["trim"] = True  # `| trim` on the message text
    check(render, parts)
    return parts


def assemble(parts: dict[str, Any], turns: list[tuple[str, str]], user: str, system: str | None = None) -> str:
    """The prompt the parts give for earlier (user, reply) turns and a new user message, filled as the runtimes
    fill them (runtime.manifest.fill_template)."""
    users = [u for u, _ in turns] + [user]
    out = ""
    for i, u in enumerate(users):
        out += fill_template(parts, u, "prompt" if i == 0 else "turn", system if i == 0 else None)
        if i < len(turns):
            out += turns[i][1]
    return out


# Message texts the parts must render as the template does: placeholders, braces, whitespace around and inside.
_PROBES = [(_USER, _REPLY, _USER2), ("  {prompt} {system} }{", " spaced reply \n", "\n\ttabbed\n"),
           ("x", "\u00a0nbsp\u00a0", " \u3000ideographic space\u2028")]


def check(render, parts: dict[str, Any]) -> None:
    """Refuses parts that do not reproduce the template on conversations of 1 to 3 turns, with and without a
    system message (an empty one too) where the parts have one, on plain and awkward message texts."""
    systems = [None] + ([_SYSTEM, "", " sys \n"] if "system" in parts else [])
    for user, reply, user2 in _PROBES:
        cases = [([], user), ([(user, reply)], user2), ([(user, reply), (user2, _REPLY2)], _USER3)]
        for system in systems:
            for turns, last in cases:
                messages = [_system(system)] if system is not None else []
                for u, a in turns:
                    messages += [_user(u), _assistant(a)]
                want = render(messages + [_user(last)])
                if assemble(parts, turns, last, system) != want:
                    raise TemplateError(f"the chat template's rendering of {len(turns) + 1} turn(s) is not the "
                                        f"parts' (got {want[:80]!r}); it depends on more of the message text than "
                                        f"fixed parts can express")


def _child() -> None:
    """python -c "...; _child()": stdin {"template", "config"} -> stdout {"parts"} or {"error"}, bounded."""
    try:
        import resource

        soft = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + RENDER_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    except (ImportError, ValueError, OSError):
        pass  # no rlimits on this platform: the deadline still holds
    request = json.loads(sys.stdin.read())
    try:
        reply = {"parts": chat_parts(request["template"], request["config"])}
    except TemplateError as e:
        reply = {"error": str(e)}
    except MemoryError:
        reply = {"error": f"rendering it needs more than {RENDER_MEMORY >> 20} MiB"}
    except RecursionError:
        reply = {"error": "it recurses without end"}
    except Exception as e:  # noqa: BLE001 - any failure of a checkpoint's code is reported, never raised
        reply = {"error": f"rendering it fails ({type(e).__name__}: {' '.join(str(e).split())[:200]})"}
    sys.stdout.write(json.dumps(reply))


def bounded_chat_parts(template: str, tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """chat_parts in a child process with RENDER_SECONDS and RENDER_MEMORY; TemplateError with the reason."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    request = json.dumps({"template": template, "config": tokenizer_config})
    try:
        proc = subprocess.run([sys.executable, "-c", "from export.chat_template import _child; _child()"],
                              input=request, capture_output=True, text=True, timeout=RENDER_SECONDS, env=env)
    except subprocess.TimeoutExpired:
        raise TemplateError(f"rendering it takes more than {RENDER_SECONDS:g} s") from None
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise TemplateError(f"rendering it failed ({last[:200]})") from None
    if "error" in reply:
        raise TemplateError(reply["error"])
    return reply["parts"]


def package_templates(checkpoint: Path, base: dict[str, dict[str, Any]], max_length: int | None = None,
                      count_tokens=None) -> dict[str, dict[str, Any]]:
    """The manifest's templates: `base` (phi-1.5's formats), with "chat" taken from the checkpoint's own chat
    template when it has one. A template that cannot be used leaves the package without "chat" (said once on
    stderr). `count_tokens(text)` and `max_length` refuse parts whose fixed text alone fills the context."""
    try:
        template, config = read_chat_template(checkpoint)
    except TemplateError as e:
        template, config, reason = "", {}, str(e)
    else:
        reason = None
    if template is None:
        return dict(base)
    templates = {k: v for k, v in base.items() if k != "chat"}
    try:
        if reason is not None:
            raise TemplateError(reason)
        parts = bounded_chat_parts(template, config)
        if count_tokens is not None and max_length is not None:
            for name in ("prompt", "turn", "system"):
                if name in parts:
                    n = count_tokens(parts[name].replace("{prompt}", "").replace("{system}", ""))
                    if n >= max_length:
                        raise TemplateError(f"its {name!r} part alone has {n} tokens, as many as the package's "
                                            f"context of {max_length} or more")
        templates["chat"] = {**parts, "stop": []}  # the stop ids end a reply
    except TemplateError as e:
        print(f"warning: {checkpoint}'s chat template is not used ({' '.join(str(e).split())}); the package has no "
              f"'chat' template", file=sys.stderr)
    return templates
