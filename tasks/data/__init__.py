"""Examples in: datasets, the built-in arithmetic problems and SVAMP equations.

`tasks.data.importers` (recorded teacher outputs) and `tasks.data.trainsets` (student training
sets) build on the teacher's parsing and prompts, so they are imported by module path, not here:
the teacher's parsing itself uses `tasks.data.equations`.
"""

from tasks.answers import EquationError, evaluate_equation
from tasks.data.arithmetic import generate_problems
from tasks.data.datasets import DatasetError, answer_type, load_dataset

__all__ = ["DatasetError", "EquationError", "answer_type", "evaluate_equation", "generate_problems", "load_dataset"]
