import re

import pytest

from tasks.answers import evaluate_equation
from tasks.data.arithmetic import TEMPLATES, generate_problems

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def test_same_arguments_give_the_same_problems():
    assert generate_problems(50, seed=3, split="train") == generate_problems(50, seed=3, split="train")


def test_another_seed_gives_other_problems():
    assert generate_problems(50, seed=0, split="train") != generate_problems(50, seed=1, split="train")


def test_a_longer_list_extends_a_shorter_one():
    assert generate_problems(80, seed=0, split="test")[:30] == generate_problems(30, seed=0, split="test")


def test_train_and_test_never_share_a_calculation():
    train = generate_problems(600, seed=0, split="train") + generate_problems(600, seed=1, split="train")
    test = generate_problems(200, seed=0, split="test") + generate_problems(200, seed=7, split="test")
    assert not {p.equation for p in train} & {p.equation for p in test}
    assert not {p.question for p in train} & {p.question for p in test}


def test_problems_look_like_svamp():
    problems = generate_problems(100, seed=0, split="train")
    assert len({p.id for p in problems}) == len({p.question for p in problems}) == 100
    assert problems[0].id == "arithmetic-train-00000"
    for problem in problems:
        body, question = problem.question.split("\n")
        assert body.endswith(".") and question.startswith("How many") and question.endswith("?")
        assert problem.equation.startswith("( ") and problem.equation.endswith(" )")
        assert re.fullmatch(r"[()+\-*/ .\d]+", problem.equation)


def test_answers_are_whole_positive_numbers_from_small_operands():
    for problem in generate_problems(300, seed=0, split="train"):
        value = evaluate_equation(problem.equation)
        assert value == int(value) and value >= 1
        operands = [float(n) for n in NUMBER.findall(problem.equation)]
        assert all(1 <= n <= 99 for n in operands)
        # every operand of the equation is written in the question, so the student can copy it
        assert all(str(int(n)) in NUMBER.findall(problem.question) for n in operands)


def test_all_templates_are_used_evenly():
    problems = generate_problems(100, seed=0, split="train")
    operators = [tuple(sorted(set(re.findall(r" ([+\-*/]) ", p.equation)))) for p in problems]
    counts = {op: operators.count(op) for op in set(operators)}
    # add (+), subtract (-), multiply (*), divide (/) and two-step (+ and -): 20 of each
    assert counts == {("+",): 20, ("-",): 20, ("*",): 20, ("/",): 20, ("+", "-"): 20}
    assert len(counts) == len(TEMPLATES)


def test_rejects_unknown_split_and_negative_count():
    with pytest.raises(ValueError, match="split"):
        generate_problems(3, seed=0, split="validation")
    with pytest.raises(ValueError, match="n must be"):
        generate_problems(-1, seed=0, split="train")
