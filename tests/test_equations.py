import json
import re

import pytest

from tasks.answers import MAX_DEPTH, EquationError, equations_match, evaluate_equation


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0),
        ("3 + 4 * 2", 11.0),
        ("(3 + 4) * 2", 14.0),
        ("10 - 4 - 3", 3.0),
        ("48 / 4 / 2", 6.0),
        ("-5 + 2", -3.0),
        ("-(2 + 3) * -1", 5.0),
        ("+7", 7.0),
        ("0.5 + .25 + 1.", 1.75),
        ("6 × 7", 42.0),
        ("84 ÷ 2", 42.0),
        ("9 − 4", 5.0),
        ("  \t( 1 +\n2 )  ", 3.0),
        ("007", 7.0),
    ],
)
def test_evaluates_plain_arithmetic(text, value):
    assert evaluate_equation(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("2 ** 3", "expected a number"),
        ("2 ^ 3", "unexpected character '^'"),
        ("x + 1", "unexpected character 'x'"),
        ("abs(-3)", "unexpected character 'a'"),
        ("__import__('os').system('true')", "unexpected character '_'"),
        ("(1).real", "unexpected character '.'"),
        ("1e308 * 10", "unexpected character 'e'"),
        ("1,000 + 2", "unexpected character ','"),
        ("2 % 3", "unexpected character '%'"),
        ("2 (3)", "after a complete expression"),
        ("1 2", "after a complete expression"),
        ("(1 + 2", "ends too early"),
        ("1 + 2)", "after a complete expression"),
        ("( 3 + )", "expected a number"),
        ("* 3", "expected a number"),
        ("1..2", "after a complete expression"),
        ("5 / 0", "division by zero"),
        ("5 / (2 - 2.0)", "division by zero"),
        ("9" * 31, "more than 30 digits"),
        ("1" + " + 1" * 400, "characters long"),
        ("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "nested more than"),
        ("-" * (MAX_DEPTH + 1) + "1", "nested more than"),
    ],
)
def test_refuses_anything_but_arithmetic(text, reason):
    with pytest.raises(EquationError, match=re.escape(reason)):
        evaluate_equation(text)


def test_refuses_non_text():
    with pytest.raises(EquationError, match="must be text"):
        evaluate_equation(42)


def test_equation_error_is_a_value_error():
    assert issubclass(EquationError, ValueError)


def test_huge_result_is_refused_not_infinite():
    huge = " * ".join(["9" * 30] * 12)
    with pytest.raises(EquationError, match="too large"):
        evaluate_equation(huge)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("( 84.0 / 2.0 )", "(84 / 2)", True),
        ("( ( 4.0 * 17.0 ) * 16.0 )", "(16 * 17) * 4", True),
        ("( 1.0 / 3.0 )", "0.33333", True),  # within the relative tolerance of 1e-4
        ("( 1.0 / 3.0 )", "0.33", False),
        ("(84 / 2)", "(84 - 2)", False),
        ("42", "forty-two", False),
        ("1 / 0", "1 / 0", False),
        ("0", "0.0", True),
    ],
)
def test_equations_match_by_value(a, b, expected):
    assert equations_match(a, b) is expected


def test_every_svamp_label_evaluates(shared_data):
    for split in ("train", "test"):
        with open(shared_data / "svamp" / f"svamp_{split}.json", encoding="utf-8") as handle:
            labels = [json.loads(line)["label"] for line in handle if line.strip()]
        values = [evaluate_equation(label) for label in labels]
        assert len(values) == {"train": 800, "test": 200}[split]
