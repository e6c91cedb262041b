"""The work of the pipeline as plain functions, one sub-package per stage.

- `config`: the one config model tree every stage reads.
- `answers`: reading and scoring answers (safe arithmetic for equations, answer matching).
- `data`: datasets, the built-in arithmetic problems, importers, training sets.
- `teacher`: the one teacher boundary: endpoint, online client and Batch API, error tree, retry policy,
  rate limiter, request keys, prompts, parsing.
- `generation`: planning what the store lacks and the live session that buys it.
- `student`: the T5 student, its training loop, checkpoints, evaluation and the paper's arms.
- `ops`: deployment to a Prefect server, status and reports.
"""
