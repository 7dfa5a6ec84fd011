"""Wildcard matching is exact and cannot backtrack without bound, whatever the policy says.

Correctness: the regexes of ``controller.policy.match`` agree with a plain dynamic-programming glob
matcher on adversarial patterns (runs of ``*``, ``*?*?``, colons) and long texts. Linearity is
checked on the structure of every regex built from policy text, never by timing: a regex in which
two unbounded repeats can compete for the same characters (``.*.*``, ``.*a.*``) is refused by
`competing_repeats`, and matching with it may take time exponential in the number of repeats.
bench/adversarial.py measures the time.
"""

from __future__ import annotations

import functools
import json
import re
import re._constants as sre
import re._parser as sre_parse
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.errors import MalformedPolicyDocument
from controller.policy.document import TRUST_ACTIONS, PolicyKind, parse_policy
from controller.policy.match import GlobMode, compile_globs, compile_template

# -- a structural check: no two unbounded repeats may compete -------------------------------------

_UNBOUNDED = (sre.MAX_REPEAT, sre.MIN_REPEAT)


def _can_match(item: tuple[object, object], code: int) -> bool:
    """Whether a one-character item (the body of a repeat) may match ``code``; unsure is True."""
    op, argument = item
    if op is sre.ANY:
        return True
    if op is sre.LITERAL:
        return argument == code
    if op is sre.NOT_LITERAL:
        return argument != code
    if op is sre.IN:
        negated = False
        hit = False
        for member_op, member in argument:  # type: ignore[attr-defined]
            if member_op is sre.NEGATE:
                negated = True
            elif member_op is sre.LITERAL:
                hit = hit or member == code
            elif member_op is sre.RANGE:
                hit = hit or member[0] <= code <= member[1]
            else:
                return True
        return hit != negated
    return True


def competing_repeats(source: str) -> str | None:
    """Why ``source`` may backtrack more than linearly per unbounded repeat, or None.

    Within one sequence at most one unbounded repeat may be "open" (able to give characters back
    to a later part); a literal it cannot match closes it (``[^:]*:``). Atomic groups never give
    back what they matched, so each is checked on its own; an atomic group, an alternation or a
    second repeat while a repeat is open is refused.
    """
    problems: list[str] = []

    def walk(sequence: Sequence[tuple[object, object]], open_repeat: object) -> object:
        for op, argument in sequence:
            if op in _UNBOUNDED and argument[1] == sre.MAXREPEAT:  # type: ignore[index]
                body = list(argument[2])  # type: ignore[index]
                if open_repeat is not None:
                    problems.append(f"two open repeats: {open_repeat!r} then {body!r}")
                if len(body) != 1 or body[0][0] in (*_UNBOUNDED, sre.SUBPATTERN, sre.BRANCH):
                    problems.append(f"a repeat of more than one character: {body!r}")
                open_repeat = body[0]
            elif op in _UNBOUNDED or op is sre.POSSESSIVE_REPEAT:
                walk(list(argument[2]), None)  # type: ignore[index]
            elif op is sre.ATOMIC_GROUP:
                if open_repeat is not None:
                    problems.append("an atomic group after an open repeat")
                walk(list(argument), None)  # type: ignore[arg-type]
            elif op is sre.SUBPATTERN:
                open_repeat = walk(list(argument[3]), open_repeat)  # type: ignore[index]
            elif op is sre.BRANCH:
                if open_repeat is not None:
                    problems.append("an alternation after an open repeat")
                ends = [walk(list(branch), None) for branch in argument[1]]  # type: ignore[index]
                open_repeat = next((end for end in ends if end is not None), None)
            elif op is sre.LITERAL and open_repeat is not None:
                if not _can_match(open_repeat, argument):  # type: ignore[arg-type]
                    open_repeat = None
        return open_repeat

    walk(list(sre_parse.parse(source)), None)
    return "; ".join(problems) or None


@pytest.mark.parametrize(
    "source",
    [
        ".*.*X",  # what trust-action validation built before issue 16
        ".*a.*b",
        "(?:.*?a)(?:.*?b)",
        "(a|b)*c",
        "(?:ab)*c",
        "[^:]*(?>.*?a)",
        ".*(?:x|.*y)",
    ],
)
def test_competing_repeats_refuses_regexes_that_can_backtrack(source: str) -> None:
    assert competing_repeats(source) is not None


@pytest.mark.parametrize(
    "source",
    [
        "abc",
        ".*X",
        "a(?>.*?b)(?>.*?c).*d",
        "[^:]*:[^:]*:.*",
        "(?P<v0>[^\x00]*)\x00(?P<v1>[^\x00]*)\x00a.*(?P=v0)",
        "(?:a.*)|(?:b.*)",
    ],
)
def test_competing_repeats_accepts_linear_regexes(source: str) -> None:
    assert competing_repeats(source) is None


# -- a reference matcher -------------------------------------------------------------------------


def _reference_tokens(
    segments: Sequence[tuple[str, bool]], mode: GlobMode
) -> list[tuple[str, str, bool]]:
    """``(kind, character, crosses_colons)`` for each character of the pattern."""
    tokens: list[tuple[str, str, bool]] = []
    colons = 0
    for text, literal in segments:
        for character in text:
            if character == ":" and colons < 5:
                colons += 1
                tokens.append(("literal", ":", False))
                continue
            crosses = mode is GlobMode.PLAIN or colons == 5
            if not literal and character == "*":
                tokens.append(("star", "", crosses))
            elif not literal and character == "?":
                tokens.append(("one", "", crosses))
            else:
                tokens.append(("literal", character, crosses))
    # Resource patterns cut short by a final "*" let that star run over the rest, colons too.
    if mode is GlobMode.RESOURCE and colons < 5 and tokens and tokens[-1][0] == "star":
        tokens[-1] = ("star", "", True)
    return tokens


def reference_match(
    segments: Sequence[tuple[str, bool]], mode: GlobMode, text: str, ignore_case: bool = False
) -> bool:
    """The textbook glob matcher: O(pattern x text) dynamic programming, no regexes."""
    tokens = _reference_tokens(segments, mode)
    if ignore_case:
        tokens = [(kind, character.lower(), crosses) for kind, character, crosses in tokens]
        text = text.lower()

    @functools.cache
    def matches(token_index: int, text_index: int) -> bool:
        if token_index == len(tokens):
            return text_index == len(text)
        kind, character, crosses = tokens[token_index]
        if kind == "star":
            if matches(token_index + 1, text_index):
                return True
            return (
                text_index < len(text)
                and (crosses or text[text_index] != ":")
                and matches(token_index, text_index + 1)
            )
        if text_index == len(text):
            return False
        if kind == "one":
            return (crosses or text[text_index] != ":") and matches(token_index + 1, text_index + 1)
        return text[text_index] == character and matches(token_index + 1, text_index + 1)

    try:
        return matches(0, 0)
    finally:
        matches.cache_clear()


# -- properties ----------------------------------------------------------------------------------

# Pieces that make matching hard for a backtracking matcher: runs of stars, "*?" pairs, colons.
_PIECES = st.sampled_from(["*", "?", "a", "b", "A", ":", "*?", "?*", "**", "*a", "a*"])
_PATTERNS = st.lists(_PIECES, max_size=40).map("".join)
_TEXTS = st.one_of(
    st.text(alphabet="abA:", max_size=60),
    st.builds(lambda n, tail: "a" * n + tail, st.integers(0, 400), st.sampled_from(["", "b", ":"])),
)
_MODES = st.sampled_from(list(GlobMode))


@settings(max_examples=600, deadline=None)
@given(pattern=_PATTERNS, text=_TEXTS, mode=_MODES, ignore_case=st.booleans())
@example(pattern="*" * 40 + "X", text="a" * 400, mode=GlobMode.PLAIN, ignore_case=True)
@example(pattern="*?" * 40 + "b", text="a" * 400 + "b", mode=GlobMode.PLAIN, ignore_case=False)
@example(pattern="*a" * 40 + "b", text="a" * 400, mode=GlobMode.RESOURCE, ignore_case=False)
@example(
    pattern="a:*:*:*:*" + "*?" * 20,
    text="a:b:b:b:b:" + "a" * 30,
    mode=GlobMode.ARN,
    ignore_case=False,
)
@example(pattern="a:*", text="a:b:c", mode=GlobMode.RESOURCE, ignore_case=False)
def test_globs_agree_with_the_reference_matcher(
    pattern: str, text: str, mode: GlobMode, ignore_case: bool
) -> None:
    segments = ((pattern, False),)
    regex = compile_globs((segments,), mode, ignore_case)
    assert (regex.fullmatch(text) is not None) == reference_match(segments, mode, text, ignore_case)
    assert competing_repeats(regex.pattern) is None, regex.pattern


@settings(max_examples=300, deadline=None)
@given(
    before=_PATTERNS,
    value=st.text(alphabet="ab*?:", max_size=8),
    after=_PATTERNS,
    text=_TEXTS,
    mode=st.sampled_from([GlobMode.PLAIN, GlobMode.RESOURCE]),
)
# An empty value after the final "*" of a short resource pattern: that "*" crosses colons.
@example(before="a:*", value="", after="", text="a:b:c", mode=GlobMode.RESOURCE)
# A value's colon moves the pattern's later wildcards into the next ARN segment.
@example(before="a", value="b:c:d:e:", after="*", text="ab:c:d:e:x:y", mode=GlobMode.RESOURCE)
def test_templates_agree_with_the_reference_matcher(
    before: str, value: str, after: str, text: str, mode: GlobMode
) -> None:
    """A variable's value is literal text: its ``*`` and ``?`` match only themselves."""
    matcher = compile_template(((before, False), 0, (after, False)), 1, mode)
    expected = reference_match(((before, False), (value, True), (after, False)), mode, text)
    assert matcher.match((value,), text) is expected
    assert competing_repeats(matcher.regex.pattern) is None, matcher.regex.pattern


def test_several_patterns_in_one_regex_agree_with_the_reference_matcher() -> None:
    patterns = ("*a" * 30 + "b", "*?" * 30, "a:*")
    regex = compile_globs(tuple(((pattern, False),) for pattern in patterns), GlobMode.RESOURCE)
    assert competing_repeats(regex.pattern) is None
    for text in ("a" * 200, "a" * 29, "a" * 30, "a:b:c", "ab" * 40):
        expected = any(
            reference_match(((pattern, False),), GlobMode.RESOURCE, text) for pattern in patterns
        )
        assert (regex.fullmatch(text) is not None) is expected


# -- trust policies: the action check goes through the same matcher -------------------------------


def _trust(action: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": action}
            ],
        }
    )


@pytest.fixture
def linear_regexes_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every regex compiled during the test must pass `competing_repeats`; fails at compile time.

    Failing before matching matters: the regex trust-action validation built before issue 16
    would take hours to match ``sts:`` + 40 stars + ``X``.
    """
    compiled: list[str] = []
    original = re.compile

    def checked_compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
        problem = competing_repeats(pattern)
        assert problem is None, f"{pattern!r} can backtrack: {problem}"
        compiled.append(pattern)
        return original(pattern, flags)

    compile_globs.cache_clear()
    monkeypatch.setattr(re, "compile", checked_compile)
    yield compiled
    compile_globs.cache_clear()


@pytest.mark.parametrize("stars", [10, 40, 200])
def test_trust_action_wildcards_are_checked_without_backtracking(
    linear_regexes_only: list[str], stars: int
) -> None:
    """``sts:`` + many stars + ``X`` froze the controller (issue 16, item 2): refused at once."""
    with pytest.raises(MalformedPolicyDocument, match=r"^Trust Policy statement actions "):
        parse_policy(_trust("sts:" + "*" * stars + "X"), PolicyKind.TRUST)
    assert linear_regexes_only  # the check did compile a pattern, and it passed


@pytest.mark.parametrize(
    "action", ["sts:" + "*?" * 40 + "e", "sts:" + "*" * 40 + "Role", "STS:*" + "a*" * 30]
)
def test_trust_action_wildcards_still_match_sts_actions(
    linear_regexes_only: list[str], action: str
) -> None:
    expected = any(
        reference_match(((action, False),), GlobMode.PLAIN, name, ignore_case=True)
        for name in TRUST_ACTIONS
    )
    if expected:
        parse_policy(_trust(action), PolicyKind.TRUST)
    else:
        with pytest.raises(MalformedPolicyDocument):
            parse_policy(_trust(action), PolicyKind.TRUST)
    assert linear_regexes_only
