"""Load tests and benchmarks of the inference API, over HTTP like any client (``loadtest/README.md``)."""
