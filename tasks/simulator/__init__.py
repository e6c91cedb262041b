"""The simulated teacher: a local OpenAI-compatible server that writes templated chains of thought.

Not a language model: it exists so the pipeline runs offline, in tests and in benchmarks."""

from tasks.simulator.server import Faults, RunningSimulator, SimulatedTeacher, serve_forever, start_simulator

__all__ = ["Faults", "RunningSimulator", "SimulatedTeacher", "serve_forever", "start_simulator"]
