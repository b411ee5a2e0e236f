"""What the web app, the workers, the load tests and the tests share: no torch, no Flask.

``common.contract``: task names, arguments, the result, limits, wire errors.
``common.config``: every environment variable, parsed once per process.
"""
