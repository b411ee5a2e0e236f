"""loadtest.stack: variants, Redis DB numbers, and a stack started through deploy.stack (workers, then
nginx in front of gunicorn) of a stand-in project in a scratch folder: no Redis, no model involved."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from deploy.stack import WEB_TIER
from loadtest.stack import Stack, Variant, variant_redis_url
from workers.metrics import BATCH_SIZE_METRIC

WSGI = """
import json
def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    ok = environ["PATH_INFO"] == "/readyz" or b'name="file"' in body  # an upload in the field "file"
    start_response("200 OK" if ok else "400 Bad Request", [("Content-Type", "application/json")])
    answer = {"prediction": "tabby" if ok else None, "batch_size": 2, "timings_ms": {"inference": 30.0}}
    return [json.dumps(answer).encode()]
"""
#: Writes what it was started with, forks a child, serves a batch-size histogram on its /metrics port.
WORKER = f"""
import json, os, subprocess, sys, time
from prometheus_client import Histogram, start_http_server
if os.environ.get("BATCH_POLICY") == "crash":
    sys.exit("stand-in worker: told to crash")
port = int(os.environ["WORKER_METRICS_PORT"])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
keys = ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_QUEUE", "WEB_PORT", "BATCH_SIZE"]
with open(f"worker-{{port}}.json", "w") as fh:  # before /metrics answers
    json.dump({{"env": {{k: os.environ.get(k) for k in keys}}, "argv": sys.argv[1:], "pid": os.getpid(),
               "child": child.pid}}, fh)
sizes = Histogram("{BATCH_SIZE_METRIC}", "batch sizes", buckets=(1, 2, 4))
start_http_server(port)
while True:
    sizes.observe(2)
    time.sleep(0.02)
"""
GUNICORN_CONF = "workers = 1\nthreads = 4\nworker_class = 'gthread'\n"


def stand_in_project(root: Path) -> Path:
    """webapp/ and workers/ that deploy.stack's commands start, in a scratch folder."""
    files = {"webapp/__init__.py": "", "webapp/wsgi.py": WSGI, "webapp/gunicorn.conf.py": GUNICORN_CONF,
             "workers/__init__.py": "", "workers/__main__.py": WORKER}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_variants_redis_db_numbers_and_db_zero_is_never_flushed(tmp_path: Path) -> None:
    variants = [Variant("v"), Variant("b", {"USE_BATCH_PROCESSING": "on", "WORKERS": "4"})]
    assert [(v.mode, v.workers) for v in variants] == [("individual", 1), ("batch", 4)]
    for env, named in (({"REDIS_URL": "redis://elsewhere"}, "REDIS_URL"), ({"WORKERS": "0"}, "WORKERS")):
        with pytest.raises(ValueError, match=named):
            Variant("x", env)
    assert variant_redis_url("redis://127.0.0.1:6379/11", 2) == "redis://127.0.0.1:6379/13"
    assert variant_redis_url("redis://:pw@host:1/15", 0) == "redis://:pw@host:1/15"
    for url, offset in (("redis://127.0.0.1:6379/15", 1), ("redis://127.0.0.1:6379", 0)):
        with pytest.raises(ValueError):
            variant_redis_url(url, offset)
    stack = Stack(Variant("v"), redis_url="redis://127.0.0.1:6379/0", log_dir=tmp_path, project_root=tmp_path)
    with pytest.raises(ValueError, match="DB 0"):
        stack.start()
    assert not list(tmp_path.glob("*.log"))  # nothing was started


def test_three_workers_answer_through_the_web_tier_and_every_process_stops(tmp_path: Path) -> None:
    project = stand_in_project(tmp_path)
    variant = Variant("w3", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4", "WORKERS": "3"})
    with Stack(variant, redis_url="redis://127.0.0.1:6379/7", log_dir=project / "logs", project_root=project,
               flush=False) as stack:
        assert list(stack.services) == ["worker", "worker-1", "worker-2", *WEB_TIER]
        assert 0 < stack.wait_ready(timeout=60) < 60  # /readyz, one upload, and every worker's /metrics
        infos = [json.loads((project / f"worker-{port}.json").read_text()) for port in stack.metrics_ports]
        assert infos[0]["env"] == {"REDIS_URL": "redis://127.0.0.1:6379/7", "CELERY_BROKER_URL":
                                   "redis://127.0.0.1:6379/7", "CELERY_QUEUE": stack.queue,
                                   "WEB_PORT": str(stack.web_port), "BATCH_SIZE": "4"}
        # One queue; node names worker-0@host .. as make up WORKERS=3 gives them.
        assert [info["env"]["CELERY_QUEUE"] for info in infos] == [stack.queue] * 3
        assert [info["argv"] for info in infos] == [[f"--hostname=worker-{n}@%h"] for n in range(3)]
        tree = psutil.Process(os.getpid()).children(recursive=True)
        assert {infos[0]["pid"], infos[0]["child"]} <= {p.pid for p in tree}
        assert set(stack.cpu_roots()) == set(stack.services) and stack.run_dir.is_dir()
    assert not stack.run_dir.exists()  # its RUN_DIR goes with it
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)
