"""loadtest.stack: variants, Redis DB numbers, and a stack started through deploy.stack.

The stack test runs a stand-in project (a tiny WSGI app under real gunicorn and a
worker that forks a child) from a scratch folder, so no Redis or model is involved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from deploy.stack import WEB_TIER, wait_until
from loadtest.stack import Stack, StackStartError, Variant, variant_redis_url

WSGI = """
import json, os
def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/readyz":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    if path == "/predict" and environ.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        ok = b"\\r\\n\\r\\n\\xff\\xd8" in body  # a JPEG in the field "file"
        start_response("200 OK" if ok else "400 Bad Request", [("Content-Type", "application/json")])
        return [json.dumps({"prediction": "tabby" if ok else None, "batch_size": 1}).encode()]
    start_response("404 Not Found", [])
    return [b""]
"""
WORKER = """
import json, os, subprocess, sys, time
keys = ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_QUEUE", "WORKER_METRICS_PORT", "WEB_PORT", "BATCH_SIZE"]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open("worker-env.json.tmp", "w") as fh:
    json.dump({"env": {k: os.environ.get(k) for k in keys}, "pid": os.getpid(), "child": child.pid}, fh)
os.replace("worker-env.json.tmp", "worker-env.json")
time.sleep(300)
"""
#: As webapp/gunicorn.conf.py: the bind comes from BIND_HOST and WEB_PORT.
GUNICORN_CONF = """import os
bind = f"{os.environ['BIND_HOST']}:{os.environ['WEB_PORT']}"
workers = 1
threads = 4
worker_class = "gthread"
"""


def stand_in_project(root: Path, wsgi: str, worker: str) -> Path:
    """webapp/ and workers/ that deploy.stack's commands start, in a scratch folder."""
    for package, files in {"webapp": {"wsgi.py": wsgi, "gunicorn.conf.py": GUNICORN_CONF},
                           "workers": {"__main__.py": worker}}.items():
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        for name, text in files.items():
            (root / package / name).write_text(text)
    return root


def test_variant_mode_and_settings() -> None:
    assert Variant("individual", {"USE_BATCH_PROCESSING": "false"}).mode == "individual"
    assert Variant("b", {"USE_BATCH_PROCESSING": "on", "BATCH_SIZE": "8"}).mode == "batch"
    with pytest.raises(ValueError, match="REDIS_URL"):
        Variant("x", {"REDIS_URL": "redis://elsewhere"})


def test_redis_db_numbers() -> None:
    assert variant_redis_url("redis://127.0.0.1:6379/11", 2) == "redis://127.0.0.1:6379/13"
    assert variant_redis_url("redis://:pw@host:1/15", 0) == "redis://:pw@host:1/15"
    with pytest.raises(ValueError):
        variant_redis_url("redis://127.0.0.1:6379/15", 1)
    with pytest.raises(ValueError):
        variant_redis_url("redis://127.0.0.1:6379", 0)


def test_refuses_to_flush_db_zero(tmp_path: Path) -> None:
    stack = Stack(Variant("v"), redis_url="redis://127.0.0.1:6379/0", log_dir=tmp_path, project_root=tmp_path)
    with pytest.raises(ValueError, match="DB 0"):
        stack.start()
    assert not list(tmp_path.glob("*.log"))  # nothing was started


def test_stack_starts_answers_and_stops_every_process(tmp_path: Path) -> None:
    project = stand_in_project(tmp_path, WSGI, WORKER)
    variant = Variant("b4", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4"})
    with Stack(variant, redis_url="redis://127.0.0.1:6379/12", log_dir=project / "logs", project_root=project,
               flush=False) as stack:
        assert 0 < stack.wait_ready(timeout=60) < 60
        info_path = project / "worker-env.json"
        wait_until(lambda: None if info_path.exists() else "no worker-env.json yet", 30, interval=0.05)
        info = json.loads(info_path.read_text())
        assert info["env"] == {
            "REDIS_URL": "redis://127.0.0.1:6379/12",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/12",
            "CELERY_QUEUE": stack.queue,
            "WORKER_METRICS_PORT": str(stack.metrics_port),
            "WEB_PORT": str(stack.web_port),
            "BATCH_SIZE": "4",
        }
        tree = psutil.Process(os.getpid()).children(recursive=True)
        assert {info["pid"], info["child"]} <= {p.pid for p in tree}
        assert set(stack.cpu_roots()) == {"worker", "web"} and stack.run_dir.is_dir()
    assert not stack.run_dir.exists()  # its RUN_DIR goes with it
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


#: A worker that also serves its /metrics port, as the real one does once its model is loaded.
SERVING_WORKER = """
import http.server, json, os, sys
port = int(os.environ["WORKER_METRICS_PORT"])
with open(f"worker-{port}.json.tmp", "w") as fh:
    json.dump({"argv": sys.argv[1:], "queue": os.environ["CELERY_QUEUE"], "pid": os.getpid()}, fh)
os.replace(f"worker-{port}.json.tmp", f"worker-{port}.json")
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"# no metrics\\n")
http.server.HTTPServer(("127.0.0.1", port), Metrics).serve_forever()
"""


def test_workers_sets_how_many_workers_a_variant_runs() -> None:
    assert Variant("v").workers == 1
    assert Variant("v", {"WORKERS": "4"}).workers == 4
    with pytest.raises(ValueError, match="WORKERS"):
        Variant("v", {"WORKERS": "0"})


def test_a_stack_with_three_workers_starts_each_on_the_same_queue(tmp_path: Path) -> None:
    project = stand_in_project(tmp_path, WSGI, SERVING_WORKER)
    variant = Variant("w3", {"WORKERS": "3"})
    with Stack(variant, redis_url="redis://127.0.0.1:6379/12", log_dir=project / "logs", project_root=project,
               flush=False) as stack:
        assert list(stack.services) == ["worker", "worker-1", "worker-2", *WEB_TIER]
        assert len(set(stack.metrics_ports)) == 3 and len(stack.metrics_urls) == 3
        stack.wait_ready(timeout=60)  # /readyz, one upload, and every worker's /metrics
        infos = [json.loads((project / f"worker-{port}.json").read_text()) for port in stack.metrics_ports]
        # One queue; node names worker-0@host .. as make up WORKERS=3 gives them.
        assert [info["queue"] for info in infos] == [stack.queue] * 3
        assert [info["argv"] for info in infos] == [[f"--hostname=worker-{n}@%h"] for n in range(3)]
        assert [info["pid"] for info in infos] == [stack.services[name].pid
                                                  for name in ("worker", "worker-1", "worker-2")]
        tree = psutil.Process(os.getpid()).children(recursive=True)
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


def test_a_stack_that_dies_says_why(tmp_path: Path) -> None:
    project = stand_in_project(tmp_path, WSGI, "import sys\nsys.exit('stand-in worker: no model')\n")
    with Stack(Variant("broken"), redis_url="redis://127.0.0.1:6379/12", log_dir=tmp_path / "logs",
               project_root=project, flush=False) as stack, \
            pytest.raises(StackStartError, match="(?s)stack broken: worker exited with 1.*no model"):
        stack.wait_ready(timeout=60)
