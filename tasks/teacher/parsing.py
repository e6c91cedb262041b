"""Reading answers out of teacher outputs. Pure functions; an unparseable output gets a reason.

Teachers ramble: a few-shot prompted model often finishes its answer and carries on with a new
"Q:" (or "Premise:") block of its own, until max_tokens cuts it off. Only the text before such a
continuation is the teacher's answer to our question, and the first "The answer is ..." sentence
in it is the answer. The rationale kept for training is the text up to and including that sentence.
Small models also glue junk of another script straight onto the answer ("The answer is
(8 * 35).で購入", "the given answer is correctにある"): an answer or verdict ends at the first
character no answer is written in.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from tasks.answers import LETTER as LETTER
from tasks.answers import THOUSANDS as THOUSANDS
from tasks.answers import EquationError, evaluate_equation, normalize

VERDICTS = ("correct", "wrong", "uncertain")
NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class ParsedCot:
    answer: str | None  # normalised for the answer type; None when unparseable
    rationale: str | None  # the text up to and including the answer sentence
    error: str | None  # why answer is None


@dataclass(frozen=True)
class ParsedEvaluation:
    verdict: str | None  # correct | wrong | uncertain
    rationale: str | None  # the reasoning before the verdict line
    error: str | None


# A new few-shot block the model wrote on its own: a line starting a question or a premise.
_CONTINUATION = re.compile(r"\n[ \t]*(?:Q|Question|Premise)\s*:")
_ANSWER = re.compile(r"\banswer is\b\s*:?\s*", re.IGNORECASE)
# A sentence ends at a newline or at a period followed by whitespace or the end (not "3.5").
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$)")
_ARITHMETIC_PREFIX = re.compile(r"[\d\s.+\-*/×÷−()]*")
_OPERATORISH = re.compile(r"[\d+\-*/×÷−()]")
_CHOICE_LINE = re.compile(r"^\(([a-z])\)\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _is_junk(char: str) -> bool:
    """A character no answer or verdict is written in: a letter of a script other than Latin or
    Greek (CJK, kana, Cyrillic, ...), an emoji or other pictograph, or an unassigned code point."""
    category = unicodedata.category(char)
    if category[0] == "L":
        return not unicodedata.name(char, "").startswith(("LATIN", "GREEK"))
    return category in ("So", "Co", "Cn", "Cs")


def _junk_at(text: str, start: int = 0, stop: int | None = None) -> int | None:
    """Where the first junk character in text[start:stop] is, or None."""
    for at in range(start, len(text) if stop is None else stop):
        if _is_junk(text[at]):
            return at
    return None


def _cut_continuation(text: str) -> tuple[str, bool]:
    match = _CONTINUATION.search(text)
    return (text[: match.start()], True) if match else (text, False)


def _no_answer(finish_reason: str | None, what: str, continued: bool = False) -> str:
    if continued:
        # Cut off, if at all, in a block of its own: max_tokens is not why the answer is missing.
        return f"no {what} before the output went on with a new question of its own"
    if finish_reason == "length":
        return f"truncated at max_tokens before the {what}"
    if finish_reason == "content_filter":
        return f"refused by the content filter before the {what}"
    return f"no {what}"


def parse_cot(
    text: str | None, answer_type: str, finish_reason: str | None = None, *, question: str | None = None
) -> ParsedCot:
    """The answer and rationale of one chain of thought.

    `question`, when given for a multiple-choice example, maps a bare letter ("(b)") to its choice
    text and canonicalises the answer to the choice as the question spells it.
    """
    if answer_type not in _READERS:
        raise ValueError(f"unknown answer type {answer_type!r}; expected one of {', '.join(_READERS)}")
    if not text or not text.strip():
        reason = "refused by the content filter" if finish_reason == "content_filter" else "empty output"
        return ParsedCot(None, None, reason)
    own, continued = _cut_continuation(text)
    first_error = None
    for found in _ANSWER.finditer(own):
        # The first answer sentence that reads as an answer of this type counts ("The answer is 71.
        # So the answer is entailment." is entailment); otherwise the first one's problem is reported.
        end = _SENTENCE_END.search(own, found.end())
        junk = _junk_at(own, found.end(), end.start() if end else None)
        if junk is not None:
            # Junk glued on ends the answer as a period would; a period just before it belongs to it.
            span_end = rationale_end = junk
        elif end is None and not continued and finish_reason in ("length", "content_filter"):
            return ParsedCot(None, None, first_error or f"truncated ({finish_reason}) inside the answer sentence")
        else:
            span_end = end.start() if end else len(own.rstrip())
            rationale_end = end.end() if end and end.group() == "." else span_end
        span = own[found.end() : span_end].strip().rstrip(".").strip().strip("*").strip()
        answer, error = _READERS[answer_type](span, question) if span else (None, "the answer sentence is empty")
        if error is None:
            return ParsedCot(answer, own[:rationale_end].strip(), None)
        first_error = first_error or error
    return ParsedCot(None, None, first_error or _no_answer(finish_reason, "'The answer is' sentence", continued))


def _quote(span: str) -> str:
    return repr(span if len(span) <= 60 else span[:57] + "...")


def _read_equation(span: str, question: str | None) -> tuple[str | None, str | None]:
    cleaned = THOUSANDS.sub("", span.replace("$", ""))
    for piece in cleaned.split("="):
        prefix = _ARITHMETIC_PREFIX.match(piece)
        expression, rest = prefix.group().strip(), piece[prefix.end() :]
        # "42 apples" is 42; "(some - 551)" or "(14, 21)" are not arithmetic.
        if not expression or _OPERATORISH.search(rest):
            continue
        try:
            evaluate_equation(expression)
        except EquationError:
            continue
        return expression, None
    return None, f"answer {_quote(span)} is not an arithmetic expression"


def choices_of(question: str) -> dict[str, str]:
    """Letter -> choice text for a question with "(a) ..." lines (the CQA layout)."""
    return {letter.lower(): choice for letter, choice in _CHOICE_LINE.findall(question)}


def _read_choice(span: str, question: str | None) -> tuple[str | None, str | None]:
    if len(re.findall(r"\([a-e]\)", span, re.IGNORECASE)) > 1:
        return None, f"answer {_quote(span)} names more than one choice"
    lettered = LETTER.match(span)
    letter, text = (lettered.group(1).lower(), lettered.group(2)) if lettered else (None, span)
    text = text.strip().strip("\"'").strip()
    choices = choices_of(question) if question else {}
    if choices:
        by_text = {normalize(choice): choice for choice in choices.values()}
        if text and normalize(text) in by_text:
            return by_text[normalize(text)], None
        if letter in choices:
            return choices[letter], None
    if text:
        return text, None
    return None, f"answer {_quote(span)} gives only a letter; parse with the question to map it to a choice"


def _read_nli(span: str, question: str | None) -> tuple[str | None, str | None]:
    found = set(re.findall(r"\b(entailment|neutral|contradiction)\b", span.lower()))
    if len(found) == 1:
        return found.pop(), None
    if found:
        return None, f"answer {_quote(span)} names more than one label"
    return None, f"answer {_quote(span)} is not entailment, neutral or contradiction"


def _read_number(span: str, question: str | None) -> tuple[str | None, str | None]:
    cleaned = THOUSANDS.sub("", span.replace("$", "")).split("=")[-1]
    number = _NUMBER.search(cleaned)
    if number is None:
        return None, f"answer {_quote(span)} has no number"
    return number.group(), None


def _read_text(span: str, question: str | None) -> tuple[str | None, str | None]:
    text = span.strip().strip("\"'").strip()
    return (text, None) if text else (None, "the answer sentence is empty")


_READERS = {
    "equation": _read_equation,
    "choice": _read_choice,
    "nli": _read_nli,
    "number": _read_number,
    "text": _read_text,
}

# A verdict word ends where no Latin letter follows ("correctにある" is correct, "correctly" is not).
_VERDICT_WORD = r"(correct|incorrect|not\s+correct|wrong|uncertain)(?![a-z\u00c0-\u024f])"
_VERDICT_LINE = re.compile(
    r"evaluation result\s*:?\s*(?:the\s+)?(?:given\s+|proposed\s+)?answer\s+is\s*[:'\"*]*\s*" + _VERDICT_WORD,
    re.IGNORECASE,
)
_VERDICT_PHRASE = re.compile(r"\bgiven answer is\s*['\"*]*\s*" + _VERDICT_WORD, re.IGNORECASE)
_RESULT_LINE = re.compile(r"evaluation result\s*:?[ \t]*([^\n]*)", re.IGNORECASE)


def _verdict_word(word: str) -> str:
    word = " ".join(word.lower().split())
    return "wrong" if word in ("incorrect", "not correct") else word


def _no_verdict(own: str, finish_reason: str | None, continued: bool) -> str:
    """Why an evaluation has no verdict: an unreadable result line says what it said instead."""
    line = _RESULT_LINE.search(own)
    if line is None:
        return _no_answer(finish_reason, "'Evaluation result' verdict", continued)
    said = line.group(1).strip()
    if finish_reason == "length" and not continued and not own[line.end() :].strip():
        return f"truncated at max_tokens before the 'Evaluation result' verdict (it ends {_quote(said)})"
    return f"the 'Evaluation result' line {_quote(said)} gives no verdict (correct, wrong or uncertain)"


def parse_evaluation(text: str | None, finish_reason: str | None = None) -> ParsedEvaluation:
    """The verdict of one self-evaluation and the reasoning before it."""
    if not text or not text.strip():
        reason = "refused by the content filter" if finish_reason == "content_filter" else "empty output"
        return ParsedEvaluation(None, None, reason)
    own, continued = _cut_continuation(text)
    match = _VERDICT_LINE.search(own)
    if match is not None:
        start = match.start()
    else:
        # No "Evaluation result:" line; a concluding "the given answer is X" sentence still counts.
        phrases = list(_VERDICT_PHRASE.finditer(own))
        if not phrases:
            return ParsedEvaluation(None, None, _no_verdict(own, finish_reason, continued))
        match = phrases[-1]
        before = own[: match.start()]
        start = max(before.rfind("\n"), before.rfind(". ") + 1, 0)
    rationale = re.sub(r"^\s*Evaluation\s*:", "", own[:start]).strip()
    return ParsedEvaluation(_verdict_word(match.group(1)), rationale, None)
