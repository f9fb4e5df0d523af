"""Replays the engine's regexes under ICU4C, the regex engine java.util.regex runs on Android.

    python3 android_demo/icu_check.py CASES.json      # CASES.json: written by the host tests (IcuCasesTest)

HotSpot's java.util.regex accepts constructs that Android's ICU-backed engine rejects at compile time (the inline
flag (?U) fails with U_REGEX_RULE_SYNTAX at offset 3), and the two can disagree on classes such as \\s. For every
pattern the engine compiles (taken from the engine itself by IcuCasesTest) this compiles it with ICU and requires
the same matches, as UTF-16 spans, on every golden input. Needs PyICU: Debian's python3-icu for the system
python3 (test-host.sh installs it). Exit 0 when all agree; 1 with one line per disagreement otherwise.
"""

from __future__ import annotations

import json
import sys


def icu_spans(pattern, text: str) -> list[list[int]]:
    matcher = pattern.matcher(text)
    spans = []
    while matcher.find():
        spans.append([matcher.start(), matcher.end()])
    return spans


def check(cases: dict) -> list[str]:
    import icu

    problems = []
    inputs = cases["inputs"]
    for case in cases["patterns"]:
        try:
            pattern = icu.RegexPattern.compile(case["pattern"])
        except icu.ICUError as e:
            problems.append(f"{case['name']}: ICU {icu.ICU_VERSION} rejects {case['pattern']!r}: {e}; "
                            f"rewrite it without that construct (Android would fail at load)")
            continue
        for text, want in zip(inputs, case["matches"], strict=True):
            got = icu_spans(pattern, text)
            if got != want:
                first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                problems.append(f"{case['name']}: on {text!r} ICU matches {got[first:first + 3]} where the JVM "
                                f"matches {want[first:first + 3]} (match {first})")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 android_demo/icu_check.py CASES.json", file=sys.stderr)
        return 2
    try:
        import icu
    except ImportError:
        print("error: PyICU is missing; apt-get install -y python3-icu and run this with /usr/bin/python3",
              file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        cases = json.load(f)
    problems = check(cases)
    for line in problems:
        print(f"icu: {line}")
    n = len(cases["patterns"])
    if problems:
        print(f"icu: {len(problems)} disagreements between ICU {icu.ICU_VERSION} and the JVM over {n} patterns")
        return 1
    print(f"icu: {n} patterns x {len(cases['inputs'])} inputs: ICU {icu.ICU_VERSION} compiles each and matches "
          f"as the JVM does")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
