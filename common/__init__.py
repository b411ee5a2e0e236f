"""What the web app, the workers, the load tests and the tests share: no torch, no Flask."""
