"""Examples in: datasets and the built-in arithmetic problems.

`tasks.data.importers` (recorded teacher outputs) and `tasks.data.trainsets` (student training
sets) build on the teacher's parsing and prompts, and are imported by module path.
"""

from tasks.data.arithmetic import generate_problems
from tasks.data.datasets import DatasetError, answer_type, load_dataset

__all__ = ["DatasetError", "answer_type", "generate_problems", "load_dataset"]
