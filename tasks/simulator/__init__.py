"""The simulated teacher: a local OpenAI-compatible server that writes templated chains of thought.

Not a language model: it exists so the pipeline runs offline, in tests and in benchmarks."""

from tasks.simulator import batches  # noqa: F401  (registers the /v1/files and /v1/batches routes)
from tasks.simulator.outcomes import Deviations, Faults
from tasks.simulator.server import RunningSimulator, serve_forever, start_simulator
from tasks.simulator.teacher import SimulatedTeacher

__all__ = ["Deviations", "Faults", "RunningSimulator", "SimulatedTeacher", "serve_forever", "start_simulator"]
