"""The watched training subprocess: validation records reach the caller, a stop ends the whole
process group, failures carry the end of the log, and the command dies with a killed search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from melecole.tuning.runner import LogReader, run_watched, tail
from tests.conftest import REPO
from tests.processes import wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")

# A stand-in for `melecole train`: starts a grandchild, then writes one validation per step.
FAKE_TRAINING = textwrap.dedent("""
    import json, subprocess, sys, time
    log, pids, steps, code = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(pids, "w").write(f"{helper.pid}\\n")
    print("training starts", flush=True)
    for step in range(1, steps + 1):
        with open(log, "a") as handle:
            handle.write(json.dumps({"step": step, "vi_split": 1.0 / step, "vi_merge": 0.5}) + "\\n")
        time.sleep(0.05)
    helper.kill()
    print("RuntimeError: the last words", file=sys.stderr, flush=True)
    sys.exit(code)
""")


def _command(tmp_path: Path, steps: int, code: int) -> list[str]:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINING)
    return [sys.executable, str(script), str(tmp_path / "val.jsonl"), str(tmp_path / "pids.txt"), str(steps), str(code)]


def test_records_arrive_in_order_and_a_stop_ends_the_process_group(tmp_path):
    seen = []

    def judge(record: dict) -> bool:
        seen.append(record["step"])
        return record["step"] == 3

    outcome = run_watched(_command(tmp_path, 10_000, 0), tmp_path / "train.log", tmp_path / "val.jsonl", judge,
                          poll_seconds=0.05)
    assert outcome.status == "pruned" and outcome.step == 3
    assert seen == [1, 2, 3]
    helper = int((tmp_path / "pids.txt").read_text())
    assert not wait_gone({helper}, 30), "the training's own child survived the stop"
    assert "training starts" in (tmp_path / "train.log").read_text()


def test_a_finished_and_a_failed_run(tmp_path):
    seen = []
    outcome = run_watched(_command(tmp_path, 3, 0), tmp_path / "train.log", tmp_path / "val.jsonl",
                          lambda r: seen.append(r["step"]) or False, poll_seconds=0.05)
    assert (outcome.status, outcome.returncode, seen) == ("finished", 0, [1, 2, 3])
    (tmp_path / "val.jsonl").unlink()
    outcome = run_watched(_command(tmp_path, 2, 3), tmp_path / "failed.log", tmp_path / "val.jsonl",
                          lambda r: False, poll_seconds=0.05)
    assert (outcome.status, outcome.returncode) == ("failed", 3)
    assert outcome.error.splitlines()[-1] == "RuntimeError: the last words"


def test_the_log_reader_waits_for_complete_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    reader = LogReader(path)
    assert reader.new_records() == []
    path.write_text('{"step": 1}\n{"step": ')
    assert reader.new_records() == [{"step": 1}]
    with path.open("a") as handle:
        handle.write('2}\n')
    assert reader.new_records() == [{"step": 2}]
    assert reader.new_records() == []
    assert tail(path, 1) == '{"step": 2}' and tail(tmp_path / "none") == ""


def test_training_dies_with_a_killed_search(tmp_path):
    # A search worker (here a small script) is SIGKILLed while its training runs.
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(f"""
        import sys
        from melecole.tuning.runner import run_watched
        run_watched({_command(tmp_path, 10_000, 0)!r}, {str(tmp_path / 'train.log')!r},
                    {str(tmp_path / 'val.jsonl')!r}, lambda record: False, poll_seconds=0.05)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, str(worker)], env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "val.jsonl").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    training = [int(p) for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
    assert len(training) == 1
    process.send_signal(signal.SIGKILL)
    process.wait()
    try:
        assert not wait_gone({training[0]}, 30), "the training outlived its search worker"
    finally:
        # The stand-in's own helper is nobody's business but the test's.
        os.kill(int((tmp_path / "pids.txt").read_text()), signal.SIGKILL)
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert records and records[0]["step"] == 1
