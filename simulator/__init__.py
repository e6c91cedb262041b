"""The simulated teacher: a local OpenAI-compatible server that writes templated chains of thought.

Not a language model: it exists so the pipeline runs offline, in tests and in benchmarks."""

from simulator import batches  # noqa: F401  (registers the /v1/files and /v1/batches routes)
from simulator.outcomes import Deviations, Faults
from simulator.run import simulated_teacher
from simulator.server import RunningSimulator, serve_forever, start_simulator
from simulator.teacher import SimulatedTeacher

__all__ = ["Deviations", "Faults", "RunningSimulator", "SimulatedTeacher", "serve_forever", "simulated_teacher",
           "start_simulator"]
