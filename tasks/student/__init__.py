"""The student: its model, its explicit training loop, checkpoints, evaluation and the paper's arms.

By job: arm_training (train an arm), arm_scoring (score it), baselines (what it must beat),
answering (`mindsmirror predict`); arms holds what they share (an arm's folder, rows and pointer).
"""

from tasks.student.answering import Answer, answer_question
from tasks.student.arm_scoring import evaluate_one
from tasks.student.arm_training import TrainedArm, train_one
from tasks.student.arms import NothingToTrain
from tasks.student.baselines import score_baselines

__all__ = ["Answer", "NothingToTrain", "TrainedArm", "answer_question", "evaluate_one", "score_baselines",
           "train_one"]
