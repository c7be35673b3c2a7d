"""A local simulator of the RunComfy Model API, served over real HTTP.

It serves the submit, status, result and cancel endpoints of `runcomfy-api/WIRE.md` for the four
supported models, checks the Bearer token, validates bodies with the documented rules
(`runcomfy.catalogue`), keeps a per-token concurrency cap with an exact FIFO schedule, serves
real output files from its own URLs and injects faults from a seeded RNG. Its own endpoints
live under `/_sim/` (stats, jobs, config, reset, outputs, sample inputs). With
`SimulatorConfig(state_path=...)` its jobs survive a restart (`persistence`).

    with SimulatorServer(SimulatorConfig(concurrency=2, duration=(0.05, 0.2))) as sim:
        ... point a client at sim.base_url ...
"""

from rcbatch.runcomfy.simulator.app import create_app
from rcbatch.runcomfy.simulator.config import SimulatorConfig, parse_duration
from rcbatch.runcomfy.simulator.server import SimulatorServer, run_forever

__all__ = ["SimulatorConfig", "SimulatorServer", "create_app", "parse_duration", "run_forever"]
