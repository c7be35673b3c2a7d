"""rcbatch: a durable batch runner for RunComfy's hosted generative models.

One import package, layered; imports only point down this list:

    rcbatch.cli        the `rcbatch` command (click), process supervision, embedded Redis
    rcbatch.producer   reading CSV/JSONL specs, sweeps, registering batches
    rcbatch.worker     Celery tasks and the plain step functions under them, state, bucket
    rcbatch.runcomfy   the Model API client, the model catalogue, preflight, the simulator
    rcbatch.config     settings, read once at the edge and passed down
    rcbatch.errors     the one exception tree (imports nothing of ours)
    rcbatch.lifetime   processes that die with their parent (imports nothing of ours)

Importing this module imports nothing else, so `rcbatch --version` stays instant.
"""

__version__ = "0.2.0"
