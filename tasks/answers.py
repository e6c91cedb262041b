"""Reading and scoring answers: safe arithmetic for equations, and whether two answers match.

Teacher-output parsing, dataset importers and student evaluation all score answers here.

Equations: a small recursive-descent parser over numbers, + - * / (and the unicode × ÷ −) and parentheses.
Anything else is refused with an EquationError, and so are inputs big enough to make the parser
itself a risk (very long text, deep nesting, numbers with hundreds of digits).
"""

from __future__ import annotations

import functools
import math
import re

MAX_LENGTH = 1000  # SVAMP's longest equation is under 100 characters
MAX_DEPTH = 50  # nested parentheses and unary signs; recursion stays far below Python's limit
MAX_DIGITS = 30  # per number; a float holds ~17 significant digits anyway

THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000": a thousands separator
LETTER = re.compile(r"^\(?([a-e])\)\s*(.*)$", re.IGNORECASE | re.DOTALL)  # a choice's "(d) " prefix
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/×÷−()]))")
_OPERATOR = {"×": "*", "÷": "/", "−": "-"}


class EquationError(ValueError):
    """Text that is not a plain arithmetic expression, or one whose value is undefined."""


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_LENGTH:
        raise EquationError(f"equation is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
    tokens, position = [], 0
    stripped_end = len(text.rstrip())
    while position < stripped_end:
        match = _TOKEN.match(text, position)
        if match is None:
            bad = text[position:].lstrip()[:1]
            raise EquationError(f"unexpected character {bad!r} at position {text.index(bad, position)}")
        number, operator = match.groups()
        if number is not None and len(number.replace(".", "")) > MAX_DIGITS:
            raise EquationError(f"number with more than {MAX_DIGITS} digits")
        tokens.append(number if number is not None else _OPERATOR.get(operator, operator))
        position = match.end()
    if not tokens:
        raise EquationError("empty equation")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise EquationError("equation ends too early")
        self.position += 1
        return token

    def expression(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.unary()
            else:
                divisor = self.unary()
                if divisor == 0:
                    raise EquationError("division by zero")
                value /= divisor
        return value

    def unary(self) -> float:
        if self.peek() in ("+", "-"):
            sign = -1.0 if self.take() == "-" else 1.0
            return sign * self.nested(self.unary)
        return self.primary()

    def primary(self) -> float:
        token = self.take()
        if token == "(":
            value = self.nested(self.expression)
            if self.take() != ")":
                raise EquationError("missing closing parenthesis")
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise EquationError(f"expected a number or '(' but found {token!r}")

    def nested(self, rule) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise EquationError(f"nested more than {MAX_DEPTH} levels deep")
        try:
            return rule()
        finally:
            self.depth -= 1


def evaluate_equation(text: str) -> float:
    """The value of an arithmetic expression; EquationError for anything else."""
    if not isinstance(text, str):
        raise EquationError(f"equation must be text, not {type(text).__name__}")
    return _evaluate(text)


@functools.lru_cache(maxsize=1 << 16)  # scoring compares one gold label with many answers
def _evaluate(text: str) -> float:
    parser = _Parser(_tokenize(text))
    value = parser.expression()
    if parser.peek() is not None:
        raise EquationError(f"unexpected {parser.peek()!r} after a complete expression")
    if not math.isfinite(value):
        raise EquationError("value is too large")
    return value


def equations_match(a: str, b: str, rel_tol: float = 1e-4) -> bool:
    """True when both expressions evaluate to the same number (False if either does not parse)."""
    try:
        left, right = evaluate_equation(a), evaluate_equation(b)
    except EquationError:
        return False
    return math.isclose(left, right, rel_tol=rel_tol, abs_tol=1e-9)


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, no articles, single spaces: for exact-match scoring."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_number(text: str) -> float | None:
    cleaned = THOUSANDS.sub("", text.replace("$", "")).strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_match(answer_type: str, predicted: str | None, gold: str | None) -> bool:
    """Whether a predicted answer is the gold one: numerically for equations and numbers,
    by normalised text otherwise (a choice's "(d) " letter prefix is ignored)."""
    if predicted is None or gold is None:
        return False
    if answer_type == "equation":
        return equations_match(predicted, gold)
    if answer_type == "number":
        left, right = _as_number(predicted), _as_number(gold)
        if left is not None and right is not None:
            return math.isclose(left, right, rel_tol=1e-4, abs_tol=1e-9)
    if answer_type == "choice":
        predicted, gold = (LETTER.sub(r"\2", value.strip()) for value in (predicted, gold))
    return normalize(predicted) == normalize(gold) and bool(normalize(gold))
