"""Named defaults of the load-test plan (the stack's own settings are in ``common.config``)."""

from __future__ import annotations

__all__ = ["BENCHMARK_SIZES", "BENCHMARK_TIMEOUT_S", "DURATION_S", "EQUAL_USERS", "LOCUST_SLACK_S", "OUT",
           "READY_TIMEOUT_S", "REDIS_DB_SPAN", "REPEATS", "SEED_SPAWN_RATE", "SEED_USERS", "STOP_TIMEOUT_S",
           "SWEEP_DURATION_S", "TUNE_LOADS", "TUNE_SIZES", "TUNE_TIMEOUTS", "USERS_SWEEP", "WARMUP_S"]

#: The report the comparison and the tuning write their sections into.
OUT = "docs/benchmarks.md"
#: The guide's users and spawn rates per mode (its two locust commands).
SEED_USERS = {"individual": 10, "batch": 20}
SEED_SPAWN_RATE = {"individual": 2.0, "batch": 5.0}
#: The same user count for every mode, for a like-for-like comparison.
EQUAL_USERS = 20
#: Users per point of the sweep.
USERS_SWEEP = (1, 2, 4, 8, 16, 32)
#: Measured seconds of the guide's runs (its --run-time 60s) and of each sweep point.
DURATION_S = 60.0
SWEEP_DURATION_S = 20.0
#: Seconds of load before measuring on each freshly started stack (dropped).
WARMUP_S = 10.0
#: How many times the whole plan runs (variants alternate A B C A B C).
REPEATS = 2
#: Redis DBs the stacks of a plan spread over: stack i uses the base DB + (i mod span).
REDIS_DB_SPAN = 3
#: Seconds to wait for GET /readyz and one answered upload after starting a stack.
READY_TIMEOUT_S = 180.0
#: Seconds locust lets each user finish its request when the run time is up. 0: requests still in
#: flight are dropped, as locust does by default; waiting for them would stretch the measured window
#: by up to RESULT_TIMEOUT whenever one request is slow, and with it divide the requests per second.
STOP_TIMEOUT_S = 0.0
#: Extra seconds a locust run may take beyond run time + stop timeout before it is killed.
LOCUST_SLACK_S = 60.0
#: Batch sizes of the model-only ceiling (python -m loadtest.model_benchmark).
BENCHMARK_SIZES = (1, 2, 4, 8, 16)
BENCHMARK_TIMEOUT_S = 900.0
#: Tuning grid: BATCH_SIZE x BATCH_TIMEOUT under low, medium and high load (users).
TUNE_SIZES = (2, 4, 8)
TUNE_TIMEOUTS = (0.05, 0.5, 2.0)
TUNE_LOADS = {"low": 2, "medium": 8, "high": 20}
