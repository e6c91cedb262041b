"""The student: a T5 model, its explicit training loop, checkpoints, evaluation and the paper's arms."""

from tasks.student.arms import (
    NothingToTrain,
    TrainedArm,
    answer_question,
    evaluate_one,
    score_baselines,
    train_one,
)

__all__ = ["NothingToTrain", "TrainedArm", "answer_question", "evaluate_one", "score_baselines", "train_one"]
