"""A built-in, deterministic generator of arithmetic word problems (the quickstart dataset).

Problems look like SVAMP ("Body\\nQuestion", equation "( 3.0 + 5.0 )") but use a small vocabulary,
numbers 1..max_number (99 by default) and five templates, so a tiny T5 can learn them in a few CPU minutes. A problem's
split is a function of its template and numbers alone, so train and test never share a
calculation, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

NAMES = ("Anna", "Ben", "Carla", "Dan", "Ella", "Finn", "Gina", "Hugo")
ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells")
SPLITS = ("train", "test")
TEST_SHARE = 4  # one calculation in four belongs to test


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    equation: str


def _number(value: int) -> str:
    return f"{float(value)}"  # SVAMP writes 84.0


def _add(rng: random.Random, top: int) -> tuple[tuple[int, ...], str, str]:
    a, b = rng.randint(1, top), rng.randint(1, top)
    body = "{name} has {a} {item}. {name} buys {b} more {item}.\nHow many {item} does {name} have now?"
    return (a, b), body, f"( {_number(a)} + {_number(b)} )"


def _subtract(rng: random.Random, top: int) -> tuple[tuple[int, ...], str, str]:
    a = rng.randint(2, top)
    b = rng.randint(1, a - 1)
    body = (
        "{name} had {a} {item}. {name} gave {b} {item} to a friend.\nHow many {item} does {name} have left?"
    )
    return (a, b), body, f"( {_number(a)} - {_number(b)} )"


def _multiply(rng: random.Random, top: int) -> tuple[tuple[int, ...], str, str]:
    a, b = rng.randint(2, min(12, top)), rng.randint(2, min(12, top))
    body = "{name} has {a} boxes. Each box holds {b} {item}.\nHow many {item} does {name} have in all?"
    return (a, b), body, f"( {_number(a)} * {_number(b)} )"


def _divide(rng: random.Random, top: int) -> tuple[tuple[int, ...], str, str]:
    b = rng.randint(2, min(9, top // 2))
    a = b * rng.randint(2, top // b)  # divides evenly and stays within 1..top
    body = "{name} shares {a} {item} equally among {b} friends.\nHow many {item} does each friend get?"
    return (a, b), body, f"( {_number(a)} / {_number(b)} )"


def _two_step(rng: random.Random, top: int) -> tuple[tuple[int, ...], str, str]:
    a, b = rng.randint(1, round(top * 60 / 99)), rng.randint(1, round(top * 39 / 99))
    c = rng.randint(1, a + b - 1)
    body = (
        "{name} has {a} {item}. {name} buys {b} more {item} and then gives away {c}.\n"
        "How many {item} does {name} have now?"
    )
    return (a, b, c), body, f"( ( {_number(a)} + {_number(b)} ) - {_number(c)} )"


TEMPLATES = {
    "add": _add,
    "subtract": _subtract,
    "multiply": _multiply,
    "divide": _divide,
    "two-step": _two_step,
}


def split_of(template: str, numbers: tuple[int, ...]) -> str:
    """The split a calculation belongs to: a stable hash, independent of seed and name."""
    digest = hashlib.sha256(repr((template, numbers)).encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def generate_problems(n: int, seed: int, split: str, max_number: int = 99) -> list[Problem]:
    """n distinct problems of `split` ("train" or "test"); the same arguments give the same list."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed * len(SPLITS) + SPLITS.index(split))
    # Ids name the number range, so problem sets of different ranges never share an id in a store.
    prefix = "arithmetic" if max_number == 99 else f"arithmetic{max_number}"
    problems: list[Problem] = []
    seen: set[str] = set()
    templates = list(TEMPLATES)
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct {split} problems; ask for fewer")
        template = templates[len(problems) % len(templates)]  # round robin keeps templates balanced
        numbers, body, equation = TEMPLATES[template](rng, max_number)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        if split_of(template, numbers) != split:
            continue
        question = body.format(name=name, item=item, **dict(zip("abc", numbers, strict=False)))
        if question in seen:
            continue
        seen.add(question)
        problems.append(
            Problem(id=f"{prefix}-{split}-{len(problems):05d}", question=question, equation=equation)
        )
    return problems
