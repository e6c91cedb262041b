"""The student: its model, its explicit training loop, checkpoints, evaluation and the paper's arms.

By job: arm_training (train an arm), arm_scoring (score it), baselines (what it must beat),
answering (`mindsmirror predict`); arms holds what they share (an arm's folder, rows and pointer).

Names load on first use: a side-by-side arm run (`python -m tasks.student.parallel`) imports only
what its job needs, not transformers for every run.
"""

from tasks.lazy import names_from

_HOMES = {
    "Answer": "tasks.student.answering",
    "answer_question": "tasks.student.answering",
    "evaluate_one": "tasks.student.arm_scoring",
    "TrainedArm": "tasks.student.arm_training",
    "train_one": "tasks.student.arm_training",
    "NothingToTrain": "tasks.student.arms",
    "score_baselines": "tasks.student.baselines",
}

__all__ = sorted(_HOMES)

__getattr__ = names_from(__name__, _HOMES)
