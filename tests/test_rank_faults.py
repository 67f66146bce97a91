"""A rank that dies (kill -9) or raises ends the job at once with one line on rank 0 naming
the rank and the reason; the last checkpoint loads and resumes (tinygrad_gpt/watchdog.py).
The watchdog's logic first, with threads standing in for ranks (no MPI); then real jobs
under `mpiexec -n 2` (tests/rank_fault_worker.py), skipped without mpiexec/mpi4py."""
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_train_distributed import corpus, environment  # noqa: F401 (corpus: a fixture)
from tinygrad_gpt import checkpoint, watchdog

WORKER = Path(__file__).with_name("rank_fault_worker.py")


class ThreadWorld:
    """Rank `rank` of `size` threads of one process: broadcast_object and allgather only."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared
        self.is_root = rank == 0

    def allgather(self, value):
        slots, barrier = self.shared
        slots[self.rank] = value
        barrier.wait()
        values = list(slots)
        barrier.wait()
        return values

    def broadcast_object(self, value, root=0):
        return self.allgather(value)[root]


class Exited(SystemExit):
    """What the stand-in for os._exit raises in the main thread."""


def watchdogs(size):
    """start() on `size` ThreadWorlds at once: (dogs by rank, exits: list of (rank, code))."""
    shared, dogs, exits = ([None] * size, threading.Barrier(size)), [None] * size, []

    def exit_of(rank):
        def exit(code):
            exits.append((rank, code))
            if threading.current_thread() is threading.main_thread():
                raise Exited(code)
            threading.Event().wait()       # a watch thread: stays, as a process that ended
        return exit

    def start(rank):
        dogs[rank] = watchdog.start(ThreadWorld(rank, size, shared), lambda: "kept: it 3",
                                    exit_of(rank))
    threads = [threading.Thread(target=start, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return dogs, exits


def wait_for(exits, n, seconds=5.0):
    deadline = time.monotonic() + seconds
    while len(exits) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)                    # and nothing more after them
    return sorted(set(exits))           # (a failing rank's own exit follows the thread's)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_one_process_has_no_watchdog():
    before = threading.active_count()
    dog = watchdog.start(ThreadWorld(0, 1, None))
    assert isinstance(dog, watchdog.Off) and not dog.active
    assert threading.active_count() == before


def test_a_rank_that_raises_is_named_on_rank_0_and_every_rank_stops(capfd):
    dogs, exits = watchdogs(3)
    assert isinstance(dogs[0], watchdog.Root) and sorted(dogs[0].peers) == [1, 2]
    try:
        raise ValueError("bad\nthing")
    except ValueError as e:
        error = e
    with pytest.raises(Exited):
        dogs[2].fail(error)         # returns once rank 0's "stop" has ended this "rank"
    assert wait_for(exits, 3) == [(0, 1), (1, 1), (2, 1)]
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: rank 2 of 3 (pid {os.getpid()} on ")
    assert "ValueError: bad thing (test_rank_faults.py:" in lines[0]
    assert lines[0].endswith("the job stops (kept: it 3)")


def test_a_rank_that_ends_without_a_word_is_named_as_killed(capfd):
    dogs, exits = watchdogs(2)
    dogs[1].done = True                           # rank 1 is gone: its end says nothing
    dogs[1].sock.shutdown(socket.SHUT_RDWR)       # as the kernel does for a killed process
    assert wait_for(exits, 1) == [(0, 1)]
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 of 2 (pid "), lines
    assert "ended without a word: killed (kill -9, out of memory) or crashed" in lines[0]


def test_rank_0_ending_without_a_word_is_said_by_rank_1_alone(capfd):
    dogs, exits = watchdogs(3)
    dogs[0].done = True                           # rank 0 is gone
    for sock, _ in dogs[0].peers.values():
        sock.shutdown(socket.SHUT_RDWR)
    assert wait_for(exits, 2) == [(1, 1), (2, 1)]
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: rank 0 of 3 (pid {os.getpid()}")
    assert "ended without a word" in lines[0]


def test_rank_0_raising_says_so_and_stops_the_others(capfd):
    dogs, exits = watchdogs(2)
    with pytest.raises(Exited):
        dogs[0].fail(KeyboardInterrupt(), code=130)
    assert wait_for(exits, 2) == [(0, 130), (1, 130)]
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 (")
    assert "KeyboardInterrupt: (no message)" in lines[0]


def test_bye_then_the_end_says_nothing_and_stops_nobody(capfd):
    dogs, exits = watchdogs(3)
    for dog in dogs:
        dog.bye()
    time.sleep(0.1)
    for sock, _ in dogs[0].peers.values():
        sock.close()
    for dog in dogs[1:]:
        dog.sock.close()
    assert wait_for(exits, 1, seconds=0.5) == []
    assert error_lines(capfd.readouterr().err) == []


def test_a_rank_that_quits_with_its_own_line_stops_the_job_quietly(capfd):
    dogs, exits = watchdogs(3)
    dogs[1].quit(2)
    assert wait_for(exits, 3) == [(0, 2), (1, 2), (2, 2)]
    assert error_lines(capfd.readouterr().err) == []


def test_a_rank_that_cannot_reach_rank_0_turns_the_watchdog_off_with_a_note(capfd,
                                                                          monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("refused")
    monkeypatch.setattr(watchdog.socket, "create_connection", refuse)
    dogs, exits = watchdogs(2)
    assert all(isinstance(dog, watchdog.Off) for dog in dogs)
    err = capfd.readouterr().err
    assert "note: rank 1 could not reach rank 0 over TCP" in err and err.count("note:") == 1


# Real jobs: mpiexec -n 2 with a fault on one rank at iteration 5 (a checkpoint at 3).

MPIEXEC = shutil.which("mpiexec")
mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                         reason="mpi4py or mpiexec not found (pip install -e '.[mpi]')")
TINY = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=8", "--batch_size=2",
        "--eval_iters=1", "--eval_interval=3", "--always_save_checkpoint", "--sample_tokens=0",
        "--log_interval=1", "--warmup_iters=0", "--parallel=off"]
KNOWN = ("training", "waiting for another process to build the token cache")


def launcher_banner(stderr):
    """(Open MPI's banner: the lines between its rules of dashes, the rest of stderr)."""
    banner, rest, inside = [], [], False
    for line in stderr.replace("\r", "\n").splitlines():
        if line.startswith("-" * 20):
            inside = not inside
        elif inside:
            banner.append(line)
        elif line.strip():
            rest.append(line)
    return banner, rest


@mpi
@pytest.mark.parametrize("rank, fault, reason", [
    (1, "kill", "ended without a word: killed (kill -9, out of memory) or crashed"),
    (1, "raise", "RuntimeError: injected fault at iteration 5 (rank_fault_worker.py:"),
    (0, "kill", "ended without a word: killed (kill -9, out of memory) or crashed"),
    (0, "raise", "RuntimeError: injected fault at iteration 5 (rank_fault_worker.py:"),
])
def test_a_rank_that_fails_ends_the_job_with_one_line_and_a_loadable_checkpoint(
        corpus, tmp_path, rank, fault, reason):
    out_dir, env = tmp_path / "r", environment(tmp_path / "cache")
    env["RANK_FAULT_AT"] = str(tmp_path / "fault_at")
    args = [f"--data={corpus}", f"--out_dir={out_dir}", *TINY]
    t0 = time.time()
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(WORKER), str(rank), "5",
                          fault, *args, "--max_iters=50"], env=env, capture_output=True,
                         text=True, timeout=30)
    ended = time.time()
    assert out.returncode != 0, out.stderr[-3000:]
    banner, rest = launcher_banner(out.stderr)
    lines = error_lines("\n".join(rest))
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"error: rank {rank} of 2 (pid ") and reason in lines[0], lines
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert not [line for line in rest if line not in lines and not line.startswith(KNOWN)], \
        out.stderr[-3000:]                             # the rest is the launcher's banner
    fault_at = float((tmp_path / "fault_at").read_text())
    assert ended - fault_at < 10, (ended - fault_at, t0)
    print(f"{fault} rank {rank}: ended {ended - fault_at:.2f} s after the fault, "
          f"job {ended - t0:.1f} s; line: {lines[0]}; banner: {banner}")
    info, weights, _ = checkpoint.load(out_dir)         # the last good one, whole
    assert info["iter"] == 3 and weights
    if (rank, fault) == (0, "kill"):          # rank 1 says it; it cannot read rank 0's disk
        assert lines[0].endswith("(the last checkpoint rank 0 wrote is intact)")
    else:
        assert lines[0].endswith(f"(last checkpoint: iteration 3 in {out_dir}, intact and "
                                 "loadable)")
    if (rank, fault) == (1, "kill"):
        resumed = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m",
                                  "tinygrad_gpt.train", "--resume", f"--out_dir={out_dir}",
                                  "--max_iters=6"], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from iteration 3" in resumed.stdout
        assert checkpoint.load(out_dir)[0]["iter"] == 6
