"""LitServe serving the project's model with its preprocessing (run by LitServe's own virtualenv):
``POST /predict`` (multipart field ``file``) answers the project's fields; ``GET /health`` is LitServe's.
LitServe's own ``batch`` (torch.stack) and ``unbatch`` (a list as is) serve.
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation as a
# class, to choose how it parses the HTTP request.
import argparse
from collections.abc import Sequence
from typing import Any

import litserve as ls
import torch
from starlette.requests import Request

from .classify import Classifier


class ClassifierAPI(ls.LitAPI):
    def __init__(self, threads: int | None, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.threads = threads

    def setup(self, device: str) -> None:
        self.classifier = Classifier(self.threads)
        self.classifier.warmup(range(1, self.max_batch_size + 1))

    def decode_request(self, request: Request) -> torch.Tensor:
        """(``Request`` tells LitServe to parse a multipart body as a form; what it passes is that form.)"""
        return self.classifier.preprocess(request["file"].file.read())

    def predict(self, x: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        output = self.classifier.predict(x if x.dim() == 4 else x.unsqueeze(0))
        return [(row, len(output)) for row in output]

    def encode_response(self, output: Any) -> dict[str, Any]:
        if isinstance(output, list):  # max_batch_size 1: LitServe calls predict per request, no unbatch
            output = output[0]
        row, size = output
        return self.classifier.answer(row, "litserve", size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="on 127.0.0.1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the inference worker")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-timeout", type=float, default=0.05)
    args = parser.parse_args(argv)
    api = ClassifierAPI(args.threads, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False,
               log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
