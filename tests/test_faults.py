"""Fault injection: runs SIGKILLed at random instants, again and again, each time resumed. After every
kill the next --resume must continue from the newest complete checkpoint and find no temporary file
left, and TensorBoard (read back as its server reads it) must show every step once, with the values of
the process that trained it last: one run, three kills."""
import re
import signal
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
import tensorflow as tf

from conftest import TINY, make_dataset, newest_step, output, start, wait_for

pytestmark = pytest.mark.slow  # real processes: the full suite, not the quick tier

KILLS = 3
LOSS_TAGS = ("loss/D_A", "loss/G_total", "loss/cycle_a")


def temporaries(run_dir, except_pid):
    """write_atomically's NAME.tmpPID.EXT files in the run, but those of the running process."""
    paths = list(run_dir.glob("*.tmp*")) + list((run_dir / "checkpoints").glob("*.tmp*"))
    return sorted(p.name for p in paths if f".tmp{except_pid}." not in p.name)


def resumed_at(process):
    found = re.search(r"resumed \S+ at step (\d+)", output(process)[1])
    return int(found.group(1)) if found else None


def shown_by_tensorboard(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard's server shows them (its accumulator purges the steps
    a restarted run writes again)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
            for tag in LOSS_TAGS}


def written_by(path):
    """{tag: {step: value}} of one event file (one process of the run: its PID is in the name)."""
    values = {tag: {} for tag in LOSS_TAGS}
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag in values:
                values[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_random_sigkills_and_resumes_keep_the_run_consistent(tmp_path):
    dataroot = make_dataset(tmp_path / "data", counts=(2, 2, 1, 1), size=(36, 36))
    rng = np.random.default_rng(20240611)
    name = "run"
    run_dir = tmp_path / "runs" / name
    fresh = ["--dataroot", dataroot, *TINY, "--epochs", 10000, "--epochs-decay", 0, "--save-every", 1,
             "--keep-checkpoints", 2, "--sample-every", 100000, "--seed", 0]
    pids, left_behind = [], 0
    for kill in range(KILLS + 1):
        resume_step = newest_step(run_dir)
        args = ["--runs-root", tmp_path / "runs", "--name", name]
        last = kill == KILLS
        args += fresh if kill == 0 else ["--resume"] + (["--max-steps", resume_step + 3] if last else [])
        process = start("train.py", args, tmp_path / f"logs-{name}-{kill}")
        pids.append(process.pid)
        if kill:
            wait_for(lambda: resumed_at(process) is not None, process)
            assert resumed_at(process) == resume_step, "the resume did not start from the newest complete checkpoint"
            assert temporaries(run_dir, process.pid) == []
        if last:
            assert process.wait(timeout=300) == 0, output(process)[1][-3000:]
            break
        wait_for(lambda: newest_step(run_dir) > resume_step, process)  # this process has saved a checkpoint
        time.sleep(rng.uniform(0, 2.0))
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        left_behind += len(temporaries(run_dir, None))
        for tag, points in shown_by_tensorboard(run_dir).items():
            steps = [step for step, _ in points]
            assert steps == list(range(1, len(steps) + 1)), f"{tag} after kill {kill + 1}: steps {steps}"

    final_step = resume_step + 3
    assert newest_step(run_dir) == final_step
    assert temporaries(run_dir, None) == []
    # Each step's value is the one the last process that trained it wrote.
    files = sorted(run_dir.glob("events.out.tfevents.*"),
                   key=lambda path: pids.index(int(re.search(r"\.(\d+)\.\d+\.v2$", path.name).group(1))))
    expected = {tag: {} for tag in LOSS_TAGS}
    for path in files:
        for tag, values in written_by(path).items():
            expected[tag].update(values)
    shown = shown_by_tensorboard(run_dir)
    for tag in LOSS_TAGS:
        assert shown[tag] == sorted((step, value) for step, value in expected[tag].items() if step <= final_step)
        assert [step for step, _ in shown[tag]] == list(range(1, final_step + 1))
    print(f"{KILLS} kills, {len(files)} event files, {final_step} steps, {left_behind} temporaries left")
