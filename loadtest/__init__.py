"""Load tests for the inference API, run over HTTP like any client.

``locustfile.py`` holds the locust scenarios; ``python -m loadtest.compare``
runs the batch-processing guide's test plan (individual against batch) end to
end and writes ``docs/benchmarks.md``; ``python -m loadtest.tune`` measures a
grid of BATCH_SIZE and BATCH_TIMEOUT. The stacks under test start through
``deploy.stack`` as subprocesses and are measured from outside; what is
measured is named by what this repo defines (``workers.metrics``,
``workers.benchmark``, ``common.config``), never guessed. Nothing here imports
the web app or torch.
"""

__all__: list[str] = []
