"""loadtest.cpu: /proc parsing, process trees, interpolation over the window, ms per request."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import cpu
from loadtest.cpu import ProcStat, Sample, Sampler, TreeCounter


def stat_line(pid: int, ppid: int, utime: int, stime: int, start: int, comm: str = "python") -> str:
    """A /proc/<pid>/stat line with the fields the accounting reads (others zero, in proc(5)'s order)."""
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), "7", "8"] + ["0"] * 4 + [str(start)]
    return f"{pid} ({comm}) " + " ".join(fields + ["0"] * 30) + "\n"


def test_parse_stat_reads_pid_ppid_cpu_and_start_even_with_odd_command_names() -> None:
    stat = cpu.parse_stat(stat_line(1234, 1, utime=150, stime=50, start=999, comm="a (b) c) d"))
    # cutime/cstime (7, 8 here) are left out: a reaped child would be counted twice
    assert stat == ProcStat(pid=1234, ppid=1, start_ticks=999, cpu_ticks=200)


@pytest.mark.parametrize("text", ["", "1234 python S 1", "1234 (python) S 1 2 3"])
def test_parse_stat_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError):
        cpu.parse_stat(text)


def test_parse_stat_reads_this_process() -> None:
    stat = cpu.parse_stat(Path("/proc/self/stat").read_text())
    assert stat.ppid > 0 and stat.cpu_ticks >= 0 and stat.start_ticks > 0


def test_read_stats_skips_non_processes_and_unreadable_entries(tmp_path: Path) -> None:
    lines = {10: stat_line(10, 1, 5, 5, 100), 11: stat_line(11, 10, 1, 2, 200), 12: "garbage"}
    for pid, line in lines.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(line)
    (tmp_path / "self").mkdir()
    (tmp_path / "13").mkdir()  # exited between listing and reading: no stat file
    stats = cpu.read_stats(tmp_path)
    assert sorted(stats) == [10, 11] and stats[11].ppid == 10 and stats[11].cpu_ticks == 3


def test_machine_busy_seconds_count_every_busy_field_but_idle_and_iowait() -> None:
    ticks = cpu.CLOCK_TICKS
    stat = (f"cpu  {ticks} {ticks} {ticks} {50 * ticks} {9 * ticks} {ticks} {ticks} {ticks} 0 0\n"
            "cpu0 1 1 1 1 1 1 1 1 0 0\nintr 12345\n")
    assert cpu.machine_busy_seconds(stat) == pytest.approx(6.0)
    assert cpu.machine_busy_seconds(Path("/proc/stat").read_text()) > 0
    with pytest.raises(ValueError):
        cpu.machine_busy_seconds("intr 1\n")


def test_descendants_follow_every_generation_and_ignore_other_trees() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert cpu.descendants(parents, 10) == {10, 11, 12, 13}
    assert cpu.descendants(parents, 12) == {12}
    assert cpu.descendants(parents, 99) == set()


def stats_of(*procs: tuple[int, int, int, int]) -> dict[int, ProcStat]:
    """(pid, ppid, start, cpu ticks) -> what read_stats returns."""
    return {pid: ProcStat(pid, ppid, start, ticks) for pid, ppid, start, ticks in procs}


def test_tree_counter_keeps_what_exited_processes_used_and_tells_reused_pids_apart() -> None:
    ticks = cpu.CLOCK_TICKS
    counter = TreeCounter(10)
    assert counter.update(stats_of((1, 0, 1, 0), (10, 1, 5, ticks), (11, 10, 6, ticks))) == pytest.approx(2.0)
    # 11 exited (its time stays counted); 12 appeared under 11's old parent
    assert counter.update(stats_of((10, 1, 5, 2 * ticks), (12, 10, 7, ticks // 2))) == pytest.approx(3.5)
    # pid 11 reused by a new process (another start time): counted on its own
    assert counter.update(stats_of((10, 1, 5, 2 * ticks), (11, 10, 9, ticks))) == pytest.approx(4.5)
    # the root exited: nothing new, nothing lost
    assert counter.update(stats_of((1, 0, 1, 0))) == pytest.approx(4.5)
    with pytest.raises(ValueError):
        TreeCounter(0)


SAMPLES = [Sample(100.0, {"web": 1.0}), Sample(101.0, {"web": 2.0, "locust": 0.5}),
           Sample(103.0, {"web": 6.0, "locust": 1.5})]


def test_at_interpolates_between_samples_and_holds_flat_outside_them() -> None:
    assert cpu.at(SAMPLES, "web", 100.5) == pytest.approx(1.5)
    assert cpu.at(SAMPLES, "web", 102.0) == pytest.approx(4.0)
    assert cpu.at(SAMPLES, "web", 50.0) == 1.0 and cpu.at(SAMPLES, "web", 200.0) == 6.0
    assert cpu.at(SAMPLES, "locust", 100.0) == 0.5  # tracked from its first sample on
    assert cpu.at(SAMPLES, "redis", 101.0) is None


def test_window_is_the_difference_between_its_ends() -> None:
    assert cpu.window(SAMPLES, 100.5, 102.0) == {"web": pytest.approx(2.5), "locust": pytest.approx(0.5)}
    assert cpu.window(SAMPLES, 101.0, 101.0) == {"web": 0.0, "locust": 0.0}
    with pytest.raises(ValueError):
        cpu.window(SAMPLES, 102.0, 101.0)


def test_sampler_measures_a_busy_child_and_refuses_bad_use() -> None:
    busy = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
    with Sampler(interval=0.05, machine=True) as sampler:
        child = subprocess.Popen([sys.executable, "-c", busy])
        sampler.track("child", child.pid)
        child.wait(timeout=30)
        time.sleep(0.1)
    used = cpu.window(sampler.samples, sampler.samples[0].t, sampler.samples[-1].t)["child"]
    assert 0.3 <= used <= 2.0
    assert len(sampler.samples) >= 3
    machine = cpu.window(sampler.samples, sampler.samples[0].t, sampler.samples[-1].t)[cpu.MACHINE]
    assert machine >= used - 0.05  # the whole machine's busy time holds the child's
    with pytest.raises(ValueError):
        sampler.track(cpu.MACHINE, child.pid)
    with pytest.raises(ValueError):
        sampler.track("child", child.pid)
    with pytest.raises(ValueError):
        Sampler(interval=0)
