"""Load tests for the inference API, over HTTP like any client (see ``loadtest/README.md``).

Stacks start through ``deploy.stack`` and are measured from outside; what is measured is
named by ``workers.metrics``, ``workers.benchmark`` and ``common.config``, never guessed.
Nothing here imports the web app or torch.
"""

__all__: list[str] = []
