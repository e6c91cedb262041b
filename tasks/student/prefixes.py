"""The task prefixes a student input starts with: one per task the student is trained on.

A row of the training set is two tasks for the same question (distilling step-by-step): `predict:`
gives the label, `explain:` the rationale. Training, evaluation, decoding and the tiny tokenizer
all read them from here.
"""

PREDICT = "predict: "
EXPLAIN = "explain: "
PREFIXES = (PREDICT, EXPLAIN)
