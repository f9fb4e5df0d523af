"""What the teacher is asked: subtopics of each seed topic, then one prompt per (subtopic, kind, audience,
style). The report varies audience and style to get diverse textbooks from a few thousand topics; the
variation is drawn deterministically from a seed, so a rerun asks the same questions (and resumes).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

AUDIENCES = ("a high-school student", "a first-year undergraduate", "a professional programmer",
             "a curious twelve-year-old", "a graduate student")
STYLES = ("a clear textbook section", "a worked example with explanations", "concise lecture notes",
          "a dialogue between a teacher and a student", "a step-by-step tutorial")
KINDS = ("textbook", "exercises")

EXPAND = "Here is a list of {n} specific subtopics of {topic}, one per line:\n1."
TEXTBOOK = "Write {style} about {subtopic} for {audience}. Explain the ideas, then show them in use.\n\n"
EXERCISES = ("Write three exercises about {subtopic} for {audience}, each followed by a complete, worked "
             "solution.\n\nExercise 1:")
SNIPPET = "Use this passage only as inspiration:\n\"\"\"{snippet}\"\"\"\n\n"
MAX_SUBTOPIC_CHARS = 120


@dataclass(frozen=True)
class Request:
    id: str  # sha256 of everything that decides the reply: the resume key
    topic: str
    subtopic: str
    kind: str
    audience: str
    style: str
    prompt: str
    seed: int


def parse_subtopics(reply: str, n: int) -> list[str]:
    """The first `n` plausible list items of a teacher's reply ("2. Foo", "- Foo", "Foo")."""
    out = []
    for line in reply.splitlines():
        item = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip().rstrip(".")
        if 3 <= len(item) <= MAX_SUBTOPIC_CHARS and any(c.isalpha() for c in item) and item not in out:
            out.append(item)
        if len(out) == n:
            break
    return out


def make_requests(topic: str, subtopics: list[str], per_subtopic: int, seed: int,
                  snippets: list[str] = ()) -> list[Request]:
    """`per_subtopic` requests for each subtopic (the topic itself when there are none)."""
    rng = random.Random(f"{seed}\0{topic}")
    out = []
    for subtopic in subtopics or [topic]:
        for k in range(per_subtopic):
            kind, audience, style = KINDS[k % len(KINDS)], rng.choice(AUDIENCES), rng.choice(STYLES)
            template = TEXTBOOK if kind == "textbook" else EXERCISES
            prompt = template.format(style=style, subtopic=subtopic, audience=audience)
            if snippets:
                prompt = SNIPPET.format(snippet=rng.choice(snippets)[:800]) + prompt
            request_seed = rng.randrange(2**31)
            key = hashlib.sha256(f"{prompt}\0{request_seed}".encode()).hexdigest()[:16]
            out.append(Request(key, topic, subtopic, kind, audience, style, prompt, request_seed))
    return out
