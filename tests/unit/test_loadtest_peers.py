"""loadtest.peers: the variants, the section built from a run folder's files, the LitServe venv's pins."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from loadtest import peers
from loadtest.peer_servers import venv
from loadtest.stack import ModelSettings
from tests.unit.test_loadtest_report import build_beside, record, write_runs


def test_variants_are_the_peers_in_the_order_asked_and_the_baseline_a_worktree(tmp_path: Path) -> None:
    chosen = peers.variants(batch_size=4, batch_timeout=2.0)
    assert [(v.name, v.mode) for v in chosen] == [("individual", "project"), ("batch-adaptive", "project"),
                                                  ("litserve", "litserve"), ("plain-celery", "plain-celery")]
    assert chosen[1].env == {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4", "BATCH_TIMEOUT": "2",
                             "BATCH_POLICY": "adaptive"}
    assert "max_batch_size 4" in chosen[2].label and "batch_timeout 0.05 s" in chosen[2].label
    assert [v.name for v in peers.variants(["plain-celery", "individual"])] == ["plain-celery", "individual"]
    for bad in (["individual", "triton"], [], ["baseline"]):  # baseline only with --baseline
        with pytest.raises(ValueError, match="unknown variants"):
            peers.variants(bad)
    # the image store and the baseline variants differ only where named
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    baseline = peers.baseline_root("HEAD", parent=tmp_path)
    assert baseline == tmp_path / head
    batch, inline, before = peers.variants(["batch-adaptive", "batch-inline", "baseline"], baseline=baseline)
    assert inline.env == {**batch.env, "IMAGES_BY_REFERENCE": "false"} and inline.root is None
    assert (before.env, before.root, before.mode) == (batch.env, baseline, "project") and head in before.label
    with pytest.raises(ValueError, match="not a commit"):
        peers.baseline_root("no-such-revision-anywhere")


def run(variant: str, users: int, repeat: int, rps: float, p50: float, p95: float, cpu_s: dict[str, float],
        failures: int = 0, window_s: float = 30.0) -> peers.RunRecord:
    return record(variant, users, repeat, rps=rps, p50=p50, p95=p95, failures=failures, window_s=window_s,
                  requests=round(rps * 30 if users > 1 else rps * 10),
                  mode=variant, label=f"the {variant}", cpu_s=cpu_s)


RECORDS = [  # "machine": busier than every measured tree (locust included) by 2.7 s and 5.4 s in 27 s
    run("individual", 20, 1, 50.0, 380, 600, {"web": 3.0, "worker": 36.0, "redis": 1.5, "locust": 6.0,
                                              "machine": 49.2}, window_s=27.0),
    run("individual", 20, 2, 60.0, 330, 550, {"web": 3.6, "worker": 43.2, "redis": 1.8, "locust": 7.2,
                                              "machine": 61.2}, window_s=27.0),
    run("individual", 1, 1, 30.0, 31, 40, {"web": 0.5}, window_s=10.0),
    run("individual", 1, 2, 31.0, 33, 42, {"web": 0.5}, window_s=10.0),
    run("litserve", 20, 1, 70.0, 280, 400, {"litserve": 52.5, "locust": 8.4}, failures=21),
    run("litserve", 1, 1, 25.0, 40, 55, {"litserve": 5.0}, window_s=10.0),
]


def test_build_report_writes_the_tables_section_and_csv_from_the_run_folder(tmp_path: Path) -> None:
    plan = {"command": "python -m loadtest.peers --duration 30", "users": 20, "duration_s": 30.0,
            "one_user_duration_s": 10.0, "model": "efficientnet_lite0", "model_weights": None,
            "variant_names": list(peers.VARIANT_NAMES), "errors": ["plain-celery round 1: x"]}
    run_dir = write_runs(tmp_path / "run", RECORDS, **plan)
    lines, section = build_beside(peers.build_report, run_dir, "peers")
    out = tmp_path / "docs" / "benchmarks.md"
    assert "`python -m loadtest.peers --duration 30`" in section and "Test CPU" in section
    assert ("| `individual` | 55.00 (50.00–60.00) | 355 (330–380) | 575 (550–600) | 0.00 | 32 (31–33) | — |"
            in section)
    assert "| `litserve` | 70.00 | 280 | 400 | 1.00 | 40 | ×1.27 |" in section and lines[0] in section
    assert ("| Variant | web (gunicorn), CPU ms per request | nginx, CPU ms per request | worker, CPU ms per "
            "request | Redis, CPU ms per request | LitServe server, CPU ms per request | load generator "
            "(locust), CPU ms per request | All server processes, CPU ms per request | Server CPU, cores "
            "busy | Everything else on the machine, cores busy |") in section
    assert ("| `individual` | 2.0 | — | 24.0 | 1.0 | — | 4.0 | 27.0 | 1.65 (1.50–1.80) | 0.15 (0.10–0.20) |"
            in section)
    assert "| `litserve` | — | — | — | — | 25.0 | 4.0 | 25.0 | 1.75 | — |" in section
    assert "- plain-celery round 1: x" in section and "(benchmarks/peers.csv)" in section
    assert "`litserve`: the litserve" in section and "`plain-celery`" not in section  # it never ran
    with open(out.parent / "benchmarks" / "peers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = next(r for r in rows if (r["variant"], r["users"], r["repeat"]) == ("individual", "20", "1"))
    assert len(rows) == 6 and first["cpu_ms_per_request_worker"] == "24" and first["model"] == plan["model"]
    assert first["cpu_ms_per_request_litserve"] == ""
    # another model gets a section and a CSV of its own
    peers.build_report(write_runs(tmp_path / "run2", RECORDS, **{**plan, "model": "mobilenet_v3_small"}), out)
    assert "<!-- BEGIN peers-mobilenet_v3_small -->" in out.read_text()
    assert (out.parent / "benchmarks" / "peers-mobilenet_v3_small.csv").exists()


def test_options_quick_defaults_and_choices() -> None:
    args, plan = peers.cli.parse(["--quick"])
    assert (args.repeats, args.users, args.duration, args.one_user_duration) == (1, 4, 4.0, 3.0)
    assert [s.variant.name for s in plan.sessions] == list(peers.VARIANT_NAMES)
    args, plan = peers.cli.parse(["--variants", "litserve,individual", "--model", "null", "--users", "8"])
    assert [s.variant.name for s in plan.sessions] == ["litserve", "individual"] * 2 and args.model == "null"
    assert (args.repeats, args.users, args.duration, plan.record["model"]) == (2, 8, 30.0, "null")
    for bad in (["--variants", "triton"], ["--model", "resnet9000"], ["--users", "0"],
                ["--baseline", "nope-rev"]):
        with pytest.raises(SystemExit):
            peers.cli.parse(bad)
    assert ModelSettings("mobilenet_v3_small", "random", jit=False).env() == {
        "MODEL": "mobilenet_v3_small", "MODEL_WEIGHTS": "random", "MODEL_JIT": "false"}


def test_venv_pins_bare_names_and_reuses_a_virtualenv_whose_marker_matches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert venv.pinned("litserve==0.2.19") == "litserve==0.2.19" and venv.pinned("timm").startswith("timm==")
    assert venv.pinned("no-such-package-here") == "no-such-package-here"

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing to install")
    path = tmp_path / "venv"
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("")
    (path / "peers-requirements.txt").write_text("litserve==0.2.19\n")
    monkeypatch.setattr(subprocess, "run", refuse)
    assert venv.ensure_venv(path, ["litserve==0.2.19"]) == path / "bin" / "python"
    log = tmp_path / "not-yet" / "venv.log"
    with pytest.raises(AssertionError):  # another requirement: made again, logging into a new folder
        venv.ensure_venv(path, ["litserve==0.2.20"], log_path=log)
    assert log.exists()
