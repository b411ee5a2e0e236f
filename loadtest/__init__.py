"""Load tests for the inference API, run over HTTP like any client.

``locustfile.py`` holds the locust scenarios; ``python -m loadtest.compare``
runs the batch-processing guide's test plan (individual against batch) end to
end and writes ``docs/benchmarks.md``; ``python -m loadtest.tune`` measures a
grid of BATCH_SIZE and BATCH_TIMEOUT. Nothing here imports the web app, the
workers or torch: the stack is started as subprocesses and measured from
outside.
"""

__all__: list[str] = []
