"""Few-shot prompts for the teacher, in the format of the paper (chain-of-thought prompting).

A chain-of-thought request is a system instruction, a few worked exemplars as user/assistant turns,
and the question as the last user message, ``"Q: <question>\\nA:"``. Every exemplar ends with
``"The answer is ..."`` (the sentence tasks.teacher.parsing looks for).

An evaluation request asks the teacher to judge one chain of thought; its last user message is
``format_judged_input(question, cot)``::

    Q: <question>
    Proposed answer: <cot>
    Evaluation:

and the reply ends with the line ``"Evaluation result: the given answer is correct|wrong|uncertain"``.
The student is trained on the same framing, without the exemplars.

Changing any text here changes what the teacher is asked: bump the version in PROMPT_VERSIONS
(tests/test_prompts.py pins a fingerprint of every prompt to catch a forgotten bump).
"""

from __future__ import annotations

ANSWER_TYPES = ("equation", "choice", "nli", "number", "text")
KINDS = ("cot", "evaluation")

PROMPT_VERSIONS: dict[tuple[str, str], str] = {
    (answer_type, kind): f"{answer_type}-{kind}-1" for answer_type in ANSWER_TYPES for kind in KINDS
}

_FINAL = {
    "equation": 'end with the sentence "The answer is (<expression>)." where <expression> is the arithmetic '
    'expression over numbers from the question that computes the answer, e.g. "The answer is (45 + 27)."',
    "choice": 'end with the sentence "So the answer is (<letter>) <choice text>." naming exactly one of the '
    "answer choices",
    "nli": "decide whether the premise entails the hypothesis, contradicts it, or neither, and end with the "
    'sentence "So the answer is entailment.", "So the answer is neutral." or "So the answer is contradiction."',
    "number": 'end with the sentence "The answer is <number>." with the number alone',
    "text": 'end with the sentence "The answer is <answer>." with a short answer',
}

_COT_SYSTEM = (
    "You answer questions by reasoning step by step in a few short sentences. After the reasoning, {final}. "
    "Write nothing after that sentence."
)

_EVAL_SYSTEM = (
    "You check proposed answers. You are given a question ({kind}) and a proposed answer with its reasoning. "
    "Check the reasoning and the final answer step by step in a few short sentences, then end with exactly "
    'one line: "Evaluation result: the given answer is correct", "Evaluation result: the given answer is '
    'wrong" or "Evaluation result: the given answer is uncertain" (uncertain only when the question cannot '
    "be settled from what is given)."
)

_KIND_WORDS = {
    "equation": "an arithmetic word problem",
    "choice": "a multiple-choice question",
    "nli": "a premise and a hypothesis",
    "number": "a question with a numeric answer",
    "text": "a question with a short answer",
}

# (question, chain of thought) pairs written for this project in the style of the datasets.
_COT_EXEMPLARS: dict[str, list[tuple[str, str]]] = {
    "equation": [
        (
            (
                "A baker made 45 muffins in the morning and 27 muffins in the afternoon.\n"
                "How many muffins did the baker make in all?"
            ),
            (
                "The baker made 45 muffins in the morning and 27 in the afternoon. In all that is 45 + 27 = 72 "
                "muffins. The answer is (45 + 27)."
            ),
        ),
        (
            (
                "Nina gave 18 stickers to her brother. Now she has 34 stickers left.\n"
                "How many stickers did Nina have at first?"
            ),
            (
                "Nina has 34 stickers left after giving away 18. So at first she had 34 + 18 = 52 stickers. "
                "The answer is (34 + 18)."
            ),
        ),
        (
            (
                "A garden has 6 rows of tulips with 14 tulips in each row. 20 of the tulips are red.\n"
                "How many tulips are not red?"
            ),
            (
                "There are 6 rows of 14 tulips, so 6 * 14 = 84 tulips. 20 of them are red, so 84 - 20 = 64 are "
                "not red. The answer is ((6 * 14) - 20)."
            ),
        ),
        (
            "Sam packed 96 pencils equally into 8 boxes.\nHow many pencils are in each box?",
            "96 pencils are shared equally by 8 boxes. 96 / 8 = 12 pencils in each box. The answer is (96 / 8).",
        ),
    ],
    "choice": [
        (
            (
                "Where would you put a clean plate after drying it?\nAnswer Choices:\n(a) oven\n(b) cupboard\n"
                "(c) garden\n(d) bathtub\n(e) mailbox"
            ),
            (
                "The answer must be a place where clean dishes are kept. Of the above choices, only a cupboard "
                "is used to store dishes. So the answer is (b) cupboard."
            ),
        ),
        (
            (
                "What do people usually do when they feel very tired?\nAnswer Choices:\n(a) run a marathon\n"
                "(b) paint a fence\n(c) cook a big dinner\n(d) go to sleep\n(e) climb a tree"
            ),
            (
                "The answer must be something that relieves tiredness. Of the above choices, only going to sleep "
                "gives the body rest. So the answer is (d) go to sleep."
            ),
        ),
        (
            (
                "The musician tuned his instrument before the concert. What might the instrument be?\n"
                "Answer Choices:\n(a) violin\n(b) hammer\n(c) spoon\n(d) pillow\n(e) envelope"
            ),
            (
                "The answer must be something that is tuned and played at a concert. Of the above choices, only "
                "a violin is a musical instrument. So the answer is (a) violin."
            ),
        ),
    ],
    "nli": [
        (
            (
                "Premise: The Riverside Bridge is a steel arch bridge completed in 1932. It carries two lanes of "
                "traffic over the Oak River.\nHypothesis: The Riverside Bridge was finished before 1940."
            ),
            (
                "The premise says the bridge was completed in 1932, and 1932 is before 1940. "
                "So the answer is entailment."
            ),
        ),
        (
            (
                "Premise: The Riverside Bridge is a steel arch bridge completed in 1932. It carries two lanes of "
                "traffic over the Oak River.\nHypothesis: The Riverside Bridge is painted green."
            ),
            (
                "The premise describes the bridge's structure, age and traffic but says nothing about its color. "
                "So the answer is neutral."
            ),
        ),
        (
            (
                "Premise: The Riverside Bridge is a steel arch bridge completed in 1932. It carries two lanes of "
                "traffic over the Oak River.\nHypothesis: The Riverside Bridge is made of wood."
            ),
            (
                "The premise says the Riverside Bridge is a steel arch bridge, so it is not made of wood. "
                "So the answer is contradiction."
            ),
        ),
    ],
    "number": [
        (
            (
                "A baker made 45 muffins in the morning and 27 muffins in the afternoon. How many muffins did the "
                "baker make in all?"
            ),
            "The baker made 45 muffins in the morning and 27 in the afternoon. 45 + 27 = 72. The answer is 72.",
        ),
        (
            "Sam packed 96 pencils equally into 8 boxes. How many pencils are in each box?",
            "96 pencils are shared equally by 8 boxes. 96 / 8 = 12. The answer is 12.",
        ),
    ],
    "text": [
        (
            "What is the capital city of France?",
            "France's capital and largest city is Paris. The answer is Paris.",
        ),
        (
            "Which planet is known as the Red Planet?",
            (
                "Mars looks red because of iron oxide on its surface, which is why it is called the Red Planet. "
                "The answer is Mars."
            ),
        ),
    ],
}

# (question, chain of thought judged, evaluation) triples: one correct and one wrong proposal each.
_EVAL_EXEMPLARS: dict[str, list[tuple[str, str, str]]] = {
    "equation": [
        (
            _COT_EXEMPLARS["equation"][2][0],
            (
                "There are 6 rows of 14 tulips, so 6 * 14 = 84 tulips. 20 of them are red, so 84 - 20 = 64 are "
                "not red. The answer is ((6 * 14) - 20)."
            ),
            (
                "The garden has 6 * 14 = 84 tulips, and taking away the 20 red ones leaves 84 - 20 = 64. The "
                "proposed answer makes the same two steps.\nEvaluation result: the given answer is correct"
            ),
        ),
        (
            _COT_EXEMPLARS["equation"][1][0],
            (
                "Nina gave away 18 stickers and has 34 left. So she had 34 - 18 = 16 stickers. "
                "The answer is (34 - 18)."
            ),
            (
                "Nina had her 34 stickers plus the 18 she gave away, 34 + 18 = 52. The proposed answer subtracts "
                "instead of adding.\nEvaluation result: the given answer is wrong"
            ),
        ),
    ],
    "choice": [
        (
            _COT_EXEMPLARS["choice"][0][0],
            (
                "The answer must be a place where clean dishes are kept. Of the above choices, only a cupboard is "
                "used to store dishes. So the answer is (b) cupboard."
            ),
            (
                "Clean plates are stored in a cupboard; none of the other choices is a place for dishes.\n"
                "Evaluation result: the given answer is correct"
            ),
        ),
        (
            _COT_EXEMPLARS["choice"][2][0],
            (
                "The answer must be something used at a concert. Of the above choices, a hammer can make sounds. "
                "So the answer is (b) hammer."
            ),
            (
                "A hammer is a tool, not an instrument that is tuned; the violin is the only instrument among the "
                "choices.\nEvaluation result: the given answer is wrong"
            ),
        ),
    ],
    "nli": [
        (
            _COT_EXEMPLARS["nli"][0][0],
            (
                "The premise says the bridge was completed in 1932, and 1932 is before 1940. "
                "So the answer is entailment."
            ),
            (
                "Completed in 1932 means finished before 1940, so the premise entails the hypothesis.\n"
                "Evaluation result: the given answer is correct"
            ),
        ),
        (
            _COT_EXEMPLARS["nli"][1][0],
            "Steel bridges are usually painted, and green is a common color. So the answer is entailment.",
            (
                "The premise never mentions the bridge's color, so it cannot entail the hypothesis; the right "
                "label is neutral.\nEvaluation result: the given answer is wrong"
            ),
        ),
    ],
    "number": [
        (
            _COT_EXEMPLARS["number"][1][0],
            "96 pencils are shared equally by 8 boxes. 96 / 8 = 12. The answer is 12.",
            (
                "Dividing 96 pencils among 8 boxes gives 96 / 8 = 12 per box.\n"
                "Evaluation result: the given answer is correct"
            ),
        ),
        (
            _COT_EXEMPLARS["number"][0][0],
            "The baker made 45 and 27 muffins. 45 - 27 = 18. The answer is 18.",
            (
                "The question asks for the muffins made in all, 45 + 27 = 72, not the difference.\n"
                "Evaluation result: the given answer is wrong"
            ),
        ),
    ],
    "text": [
        (
            _COT_EXEMPLARS["text"][0][0],
            "France's capital and largest city is Paris. The answer is Paris.",
            "Paris is the capital of France.\nEvaluation result: the given answer is correct",
        ),
        (
            _COT_EXEMPLARS["text"][1][0],
            "Jupiter has a famous red spot, so it is the Red Planet. The answer is Jupiter.",
            (
                "The Red Planet is Mars; Jupiter's red spot does not give it that name.\n"
                "Evaluation result: the given answer is wrong"
            ),
        ),
    ],
}


def _check(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"unknown answer type {answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")


def format_question(question: str) -> str:
    """The user turn that asks for a chain of thought."""
    return f"Q: {question.strip()}\nA:"


def format_judged_input(question: str, cot: str) -> str:
    """The user turn that asks for an evaluation of `cot`; also the student's self-evaluation input."""
    return f"Q: {question.strip()}\nProposed answer: {cot.strip()}\nEvaluation:"


def cot_system_prompt(answer_type: str) -> str:
    _check(answer_type)
    return _COT_SYSTEM.format(final=_FINAL[answer_type])


def eval_system_prompt(answer_type: str) -> str:
    _check(answer_type)
    return _EVAL_SYSTEM.format(kind=_KIND_WORDS[answer_type])


def cot_messages(answer_type: str, question: str) -> list[dict]:
    """Chat messages asking for one chain of thought about `question`."""
    messages = [{"role": "system", "content": cot_system_prompt(answer_type)}]
    for exemplar_question, cot in _COT_EXEMPLARS[answer_type]:
        messages.append({"role": "user", "content": format_question(exemplar_question)})
        messages.append({"role": "assistant", "content": cot})
    messages.append({"role": "user", "content": format_question(question)})
    return messages


def eval_messages(answer_type: str, question: str, cot: str) -> list[dict]:
    """Chat messages asking for an evaluation of `cot` (pass the parsed rationale, not the raw text)."""
    messages = [{"role": "system", "content": eval_system_prompt(answer_type)}]
    for exemplar_question, judged, evaluation in _EVAL_EXEMPLARS[answer_type]:
        messages.append({"role": "user", "content": format_judged_input(exemplar_question, judged)})
        messages.append({"role": "assistant", "content": evaluation})
    messages.append({"role": "user", "content": format_judged_input(question, cot)})
    return messages


def prompt_version(answer_type: str, kind: str) -> str:
    _check(answer_type)
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected 'cot' or 'evaluation'")
    return PROMPT_VERSIONS[(answer_type, kind)]
