"""The SIMULATED teacher's answers: template chains of thought and self-evaluations.

Not a language model: each reply is a template filled from the gold label it was given, sometimes
deliberately wrong, built in microseconds. simulator.server serves these over HTTP.
"""

from __future__ import annotations

import math
import random
import re

from tasks.answers import EquationError, answers_match, evaluate_equation
from tasks.teacher.parsing import choices_of, parse_cot


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}".rstrip("0").rstrip(".")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_INNERMOST = re.compile(r"\(\s*(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*\)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*"}


def _compact(equation: str) -> str:
    """ "( ( 36.0 + 7.0 ) - 23.0 )" -> "((36 + 7) - 23)"."""
    text = _NUMBER.sub(lambda m: _fmt(float(m.group())), equation)
    text = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", text))
    return " ".join(text.split())


def _unwrapped(expression: str) -> str:
    """ "(50 + 98)" -> "50 + 98"; "(1 + 2) * (3 + 4)" stays as it is."""
    if not (expression.startswith("(") and expression.endswith(")")):
        return expression
    depth = 0
    for i, char in enumerate(expression):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and i < len(expression) - 1:
            return expression
    return expression[1:-1]


def _steps(equation: str) -> list[str]:
    """The calculation, innermost parentheses first: ["36 + 7 = 43", "43 - 23 = 20"]."""
    steps, text = [], equation
    while (match := _INNERMOST.search(text)) is not None:
        a, op, b = float(match.group(1)), match.group(2), float(match.group(3))
        if op == "/" and b == 0:
            break
        value = _OPS[op](a, b)
        steps.append(f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)}")
        text = text[: match.start()] + _fmt(value) + text[match.end() :]
    if not steps:
        steps.append(f"{_compact(equation)} = {_fmt(evaluate_equation(equation))}")
    return steps


def _wrong_equation(equation: str, rng: random.Random) -> str:
    """A plausible mistake: one operator swapped, or failing that one number misread."""
    gold = evaluate_equation(equation)
    positions = [m.start() for m in re.finditer(r"(?<=\s)[-+*/](?=\s)", equation)]
    rng.shuffle(positions)
    for at in positions:
        candidate = equation[:at] + _SWAP[equation[at]] + equation[at + 1 :]
        try:
            if not math.isclose(evaluate_equation(candidate), gold, rel_tol=1e-4):
                return candidate
        except EquationError:
            continue
    numbers = list(_NUMBER.finditer(equation))
    slip = numbers[rng.randrange(len(numbers))] if numbers else None
    if slip is None:
        return f"( {equation} + 1 )"
    misread = _fmt(float(slip.group()) + rng.randint(1, 3))
    return equation[: slip.start()] + misread + equation[slip.end() :]


def _equation_cot(question: str, gold: str, wrong: bool, rng: random.Random) -> str:
    equation = _wrong_equation(gold, rng) if wrong else gold
    numbers = [_fmt(float(n)) for n in _NUMBER.findall(equation)]
    listed = ", ".join(numbers[:-1]) + f" and {numbers[-1]}" if len(numbers) > 1 else numbers[0]
    opener = rng.choice(
        [f"The problem gives {listed}.", f"The numbers that matter are {listed}.", "Let's work it out step by step."]
    )
    steps = _steps(equation)
    connectors = ["First, ", "Then ", "So "] if len(steps) > 1 else [rng.choice(["So ", "We compute ", ""])]
    body = " ".join(f"{connectors[min(i, len(connectors) - 1)]}{step}." for i, step in enumerate(steps))
    return f"{opener} {body} The answer is ({_unwrapped(_compact(equation))})."


def _choice_cot(question: str, gold: str, wrong: bool, rng: random.Random) -> str:
    choices = choices_of(question)
    right = next((letter for letter, text in choices.items() if answers_match("choice", text, gold)), None)
    if not choices:
        return f"The question points to {gold}. So the answer is {gold}."
    others = [letter for letter, text in choices.items() if not answers_match("choice", text, gold)]
    letter = rng.choice(others) if (wrong or right is None) and others else right
    opener = rng.choice(["The answer must fit the question.", "We look for the choice that best fits the question."])
    return (f"{opener} Of the above choices, {choices[letter]} fits best. "
            f"So the answer is ({letter}) {choices[letter]}.")


_NLI_REASONS = {
    "entailment": "The premise supports the hypothesis",
    "neutral": "The premise does not say whether this is true:",
    "contradiction": "The premise conflicts with the hypothesis",
}


def _nli_cot(question: str, gold: str, wrong: bool, rng: random.Random) -> str:
    label = gold if gold in _NLI_REASONS else "neutral"
    if wrong:
        label = rng.choice([other for other in _NLI_REASONS if other != label])
    hypothesis = re.search(r"Hypothesis:\s*(.*)", question)
    claim = (hypothesis.group(1).strip() if hypothesis else "the hypothesis")[:80]
    return f'{_NLI_REASONS[label]} "{claim}". So the answer is {label}.'


def _number_cot(question: str, gold: str, wrong: bool, rng: random.Random) -> str:
    try:
        value = float(gold.replace(",", ""))
    except ValueError:
        value = None
    answer = _fmt(value + rng.randint(1, 5)) if wrong and value is not None else gold
    return f"Working through the numbers in the question gives {answer}. The answer is {answer}."


def _text_cot(question: str, gold: str, wrong: bool, rng: random.Random) -> str:
    answer = "something else" if wrong else gold
    return f"Recalling what the question asks about. The answer is {answer}."


_COT_WRITERS = {
    "equation": _equation_cot,
    "choice": _choice_cot,
    "nli": _nli_cot,
    "number": _number_cot,
    "text": _text_cot,
}


def guess_gold(question: str, answer_type: str) -> str:
    """A stand-in label for a question the simulator was not told about (its answers will be guesses)."""
    if answer_type == "equation":
        numbers = _NUMBER.findall(question)[:2]
        return f"( {numbers[0]} + {numbers[1]} )" if len(numbers) == 2 else f"( {numbers[0] if numbers else 1} )"
    if answer_type == "choice":
        return next(iter(choices_of(question).values()), "unknown")
    return {"nli": "neutral", "number": "0"}.get(answer_type, "unknown")


# What Gemma 3 270M behind llama.cpp glued onto its answers and verdicts, recorded.
GLUED_JUNK = ("で購入", "にある", "です。", "元", "的な答え", "😀")


def glue_junk(text: str, rng: random.Random, rate: float) -> str:
    """With probability `rate`, junk of another script glued straight onto the answer or verdict that
    ends `text`, then the start of a rambling sentence, as a small model writes until max_tokens."""
    if rate <= 0 or rng.random() >= rate:
        return text
    return text + rng.choice(GLUED_JUNK) + rng.choice(["", "ので、次の問題", " the next step is"])


def simulate_cot(
    question: str, gold: str, answer_type: str, wrong: bool, rng: random.Random, junk_rate: float = 0.0
) -> str:
    """One template chain of thought reaching `gold` (or a wrong answer when `wrong`); `junk_rate` of
    them with junk glued after the answer."""
    return glue_junk(_COT_WRITERS[answer_type](question, gold, wrong, rng), rng, junk_rate)


def simulate_evaluation(
    question: str,
    gold: str | None,
    cot: str,
    answer_type: str,
    rng: random.Random,
    uncertain_rate: float,
    misjudge_rate: float,
    junk_rate: float = 0.0,
) -> str:
    """A self-evaluation of `cot`: mostly the true verdict, sometimes uncertain, sometimes mistaken;
    `junk_rate` of them with junk glued after the verdict."""
    return glue_junk(_evaluation(question, gold, cot, answer_type, rng, uncertain_rate, misjudge_rate),
                     rng, junk_rate)


def _evaluation(
    question: str, gold: str | None, cot: str, answer_type: str, rng: random.Random, uncertain_rate: float,
    misjudge_rate: float,
) -> str:
    parsed = parse_cot(cot, answer_type, question=question)
    if parsed.answer is None:
        return "The proposed answer never states a final answer.\nEvaluation result: the given answer is wrong"
    right = answers_match(answer_type, parsed.answer, gold)
    draw = rng.random()
    if gold is None or draw < uncertain_rate:
        return ("The proposed reasoning cannot be fully checked against the question.\n"
                "Evaluation result: the given answer is uncertain")
    if draw < uncertain_rate + misjudge_rate:
        right = not right  # a mistaken judgement, argued as if it were right
        reason = (f"The proposed answer {parsed.answer} follows from the question." if right
                  else f"The proposed answer {parsed.answer} seems to misread the question.")
    elif answer_type == "equation":
        value = _fmt(evaluate_equation(gold))
        reason = (f"The question works out to {_compact(gold)} = {value}. The proposed answer gives "
                  f"{parsed.answer} = {_fmt(evaluate_equation(parsed.answer))}, which "
                  f"{'matches' if right else 'does not match'}.")
    else:
        reason = (f"The question points to {gold}. The proposed answer is {parsed.answer}, which "
                  f"{'matches' if right else 'does not match'}.")
    return f"{reason}\nEvaluation result: the given answer is {'correct' if right else 'wrong'}"


def builtin_examples() -> dict[str, str]:
    """Question -> gold equation for the built-in arithmetic problems (default config sizes)."""
    from tasks.config import ArithmeticConfig
    from tasks.data.arithmetic import generate_problems

    config = ArithmeticConfig()
    problems = generate_problems(config.train, config.seed, "train") + generate_problems(
        config.test, config.seed, "test"
    )
    return {problem.question: problem.equation for problem in problems}


