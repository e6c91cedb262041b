"""The work of the pipeline as plain functions, one sub-package per stage.

- `config`: the one config model tree every stage reads.
- `data`: datasets, the built-in arithmetic problems, SVAMP equations, importers, training sets.
- `teacher`: the OpenAI-compatible client, its error tree, rate limiter, request keys, prompts, parsing.
- `generation`: planning what the store lacks and the live session that buys it.
- `student`: the T5 student, its training loop, checkpoints, evaluation and the paper's arms.
- `simulator`: the simulated OpenAI-compatible teacher used offline, in tests and benchmarks.
- `ops`: deployment to a Prefect server, status and reports.
"""
