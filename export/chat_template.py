"""The checkpoint's own chat template (tokenizer_config.json "chat_template", Jinja), turned into the plain
parts the runtime and the Android engine fill in without Jinja:

    prompt  the first turn:            render([user {prompt}], add_generation_prompt)
    turn    every later turn:          what render([user, assistant, user {prompt}]) adds after the reply
    system  a first turn with system:  render([system {system}, user {prompt}], add_generation_prompt)

Phi-3:       <|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n       turn <|end|>\\n<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n
Phi-4-mini:  <|user|>{prompt}<|end|><|assistant|>               turn <|end|><|user|>{prompt}<|end|><|assistant|>

The template is rendered in Jinja's sandbox, as transformers' apply_chat_template does (no code from the
checkpoint runs outside it), and the parts are accepted only if assembling them reproduces the template's own
rendering of several conversations; a template they cannot express is refused with its reason.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_USER, _USER2, _USER3 = "PHIEDGEUSERONE", "PHIEDGEUSERTWO", "PHIEDGEUSERTHREE"
_REPLY, _REPLY2, _SYSTEM = "PHIEDGEREPLYONE", "PHIEDGEREPLYTWO", "PHIEDGESYSTEM"


def read_chat_template(checkpoint: Path) -> tuple[str | None, dict[str, Any]]:
    """(the Jinja chat template or None, tokenizer_config.json) of a checkpoint folder."""
    path = Path(checkpoint) / "tokenizer_config.json"
    if not path.is_file():
        return None, {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the checkpoint's source") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{path}: chat_template is neither a string nor a list of named templates")
    return template, config if isinstance(config, dict) else {}


def _special(config: dict[str, Any], key: str) -> str:
    value = config.get(key)
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def renderer(template: str, tokenizer_config: dict[str, Any]):
    """messages, add_generation_prompt -> text, as transformers' apply_chat_template(tokenize=False)."""
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
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)

    return render


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def chat_parts(template: str, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """{"prompt", "turn"[, "system"]} with {prompt} / {system} placeholders; ValueError if not expressible."""
    import jinja2

    render = renderer(template, tokenizer_config)
    try:
        first = render([_user(_USER)])
        two = render([_user(_USER), _assistant(_REPLY), _user(_USER2)])
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template cannot be rendered ({e})") from None
    if first.count(_USER) != 1:
        raise ValueError("the chat template does not show the user's message once")
    head = first + _REPLY
    if not two.startswith(head) or two.count(_USER2) != 1:
        raise ValueError("the chat template does not continue a conversation by appending to it (a later turn "
                         "changes what came before)")
    parts = {"prompt": first.replace(_USER, "{prompt}"), "turn": two[len(head):].replace(_USER2, "{prompt}")}
    try:
        system = render([{"role": "system", "content": _SYSTEM}, _user(_USER)])
    except jinja2.TemplateError:
        system = None  # the template takes no system message
    if system is not None and system.count(_SYSTEM) == 1 and system.count(_USER) == 1 and \
            system.index(_SYSTEM) < system.index(_USER):
        parts["system"] = system.replace(_SYSTEM, "{system}").replace(_USER, "{prompt}")
    check(render, parts)
    return parts


def assemble(parts: dict[str, str], turns: list[tuple[str, str]], user: str, system: str | None = None) -> str:
    """The prompt the parts give for earlier (user, reply) turns and a new user message (the runtime's
    apply_template fills the same placeholders the same way)."""
    def fill(text: str, prompt: str) -> str:
        values = {"prompt": prompt, "system": system or ""}
        return re.sub(r"\{(prompt|system)\}", lambda m: values[m.group(1)], text)

    first = parts["system"] if system is not None and "system" in parts else parts["prompt"]
    out, users = "", [u for u, _ in turns] + [user]
    for i, u in enumerate(users):
        out += fill(first if i == 0 else parts["turn"], u)
        if i < len(turns):
            out += turns[i][1]
    return out


def check(render, parts: dict[str, str]) -> None:
    """Refuses parts that do not reproduce the template on conversations of 1 to 3 turns, with a system message
    where the parts have one."""
    cases = [([], _USER), ([(_USER, _REPLY)], _USER2), ([(_USER, _REPLY), (_USER2, _REPLY2)], _USER3)]
    for system in ([None, _SYSTEM] if "system" in parts else [None]):
        for turns, user in cases:
            messages = ([{"role": "system", "content": system}] if system else [])
            for u, a in turns:
                messages += [_user(u), _assistant(a)]
            want = render(messages + [_user(user)])
            if assemble(parts, turns, user, system) != want:
                raise ValueError(f"the chat template's rendering of {len(turns) + 1} turn(s) is not the parts' "
                                 f"(got {want[:80]!r}); it depends on more than the turn it renders")


def package_templates(checkpoint: Path, base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifest's templates: `base` (phi-1.5's formats), with "chat" taken from the checkpoint's own chat
    template when it has one. A template the parts cannot express leaves the package without "chat" (said
    once on stderr): phi-1.5's Alice/Bob format would be wrong for an instruct model."""
    template, config = read_chat_template(checkpoint)
    if template is None:
        return dict(base)
    templates = {k: v for k, v in base.items() if k != "chat"}
    try:
        templates["chat"] = {**chat_parts(template, config), "stop": []}  # the stop ids end a reply
    except ValueError as e:
        print(f"warning: {checkpoint}'s chat template is not used ({e}); the package has no 'chat' template",
              file=sys.stderr)
    return templates
