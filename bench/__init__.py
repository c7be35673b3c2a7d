"""Benchmarks: rcbatch against the API's limit and against the obvious alternatives.

Run them all with one command (each prints a Markdown table with the target beside the
figure, and `all` ends with a summary of every target):

    .venv/bin/python -m bench all            # the issue's sizes (measurements 1-4: ~15 min)
    .venv/bin/python -m bench all --quick    # trivial sizes: checks that everything runs
    .venv/bin/python -m bench makespan       # one measurement; `python -m bench --help`
    .venv/bin/python -m bench.makespan --profile DIR   # py-spy samples of every worker process

Measurements (issue 5): `makespan` (1), `peers` (2: with the baselines `naive_celery` and
`asyncio_poller`), `polling` (3), `overhead` (4); `enqueue`, `streaming`, `scale` and `chaos`
are their own modules. Shared parts: `harness` (processes, CPU and memory probes),
`pipeline` (an rcbatch cluster, batches, outcomes joined with the simulator's job records),
`runner` (the command line every measurement shares), `table` (figures and targets),
`profiling` (py-spy samples of real worker processes).

Everything runs on loopback against real processes: an embedded Redis, the simulator
(`rcbatch simulate`), real `rcbatch worker` processes and, for streaming to S3, moto's server.
Nothing here asserts a time; `tests/test_bench_smoke.py` only checks that each bench prints.
"""
