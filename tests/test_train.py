import contextlib
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tensorflow as tf

import checkpoints
from config import from_command_line
import cyclegan
import train

from conftest import TINY, runs_slow_tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_TAGS = ["loss/D_A", "loss/D_B", "loss/adversarial_a", "loss/adversarial_b", "loss/cycle_a",
             "loss/cycle_b", "loss/identity_a", "loss/identity_b", "loss/G_total"]


@pytest.fixture(scope="session", autouse=True)
def on_a_terminal(request, dataset, tmp_path_factory):
    """train.py with its stdout on a terminal (a pty, drained by a thread), started before this module's
    first test (autouse, and this scope: before any module fixture), so that it runs beside logged_run's
    train.main in this process; the test of progress lines waits for it."""
    if not runs_slow_tests(request, __name__):  # the quick tier: no test here needs it
        yield None
        return
    folder = tmp_path_factory.mktemp("terminal")
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "train.py", "--dataroot", dataset, "--runs-root", str(folder), *TINY,
                                "--max-steps", "6", "--print-every", "2", "--name", "terminal"],
                               cwd=ROOT, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    shown = []

    def read_the_terminal():
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # the terminal's other end closed: the process has ended
                break
            if not chunk:
                break
            shown.append(chunk)
        os.close(master)

    reader = threading.Thread(target=read_the_terminal, daemon=True)
    reader.start()
    yield process, reader, shown
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def logged_run(dataset, tmp_path_factory):
    """A 6-step run of train.main with its stdout to a log file (nohup, a job scheduler: sys.stdout is a
    file, not a terminal): its run folder and its log."""
    folder = tmp_path_factory.mktemp("logged")
    with open(folder / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        train.main(["--dataroot", dataset, "--runs-root", str(folder), *TINY, "--max-steps", "6", "--print-every",
                    "2", "--name", "logged"])
    return str(folder / "logged"), (folder / "log.txt").read_text()


def events(run_dir):
    accumulator = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator, tag):
    return [e.step for e in accumulator.Tensors(tag)]


@pytest.mark.slow
def test_a_run_writes_tags_checkpoint_generators_and_config(logged_run, dataset):
    run_dir = logged_run[0]
    accumulator = events(run_dir)
    tags = accumulator.Tags()["tensors"]
    for tag in LOSS_TAGS + ["learning_rate", "samples/AtoB", "samples/BtoA"]:
        assert tag in tags
    assert scalar_steps(accumulator, "loss/D_A") == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors("loss/G_total"))
    grid = tf.make_ndarray(accumulator.Tensors("samples/AtoB")[-1].tensor_proto)
    assert (int(grid[0]), int(grid[1])) == (3 * 250, 3 * 250)  # 3 test images x (real, translated, reconstructed)
    assert checkpoints.checkpoint_paths(run_dir)[-1].endswith("step-000000006.npz")
    for name in ("generator_ab.keras", "generator_ba.keras", "config.json"):
        assert os.path.isfile(os.path.join(run_dir, name))
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["dataroot"] == dataset and config["ngf"] == 4 and config["lambda_cycle"] == 10.0
    samples = set(os.listdir(os.path.join(run_dir, "samples")))
    assert {"AtoB_step0000006.png", "BtoA_step0000006.png"} <= samples


@pytest.mark.slow
def test_a_checkpoint_restores_identical_weights_optimizer_steps_and_pools(logged_run, tmp_path):
    """What --resume starts from; the resumed loop's step count (each step once in the events, the
    summary of the steps a process trained) is test_run_safety.py's test of a run resumed anywhere."""
    import shutil
    run_dir = str(tmp_path / "tiny")
    shutil.copytree(logged_run[0], run_dir)
    checkpoint = checkpoints.checkpoint_paths(run_dir)[-1]

    config, resume = from_command_line(["--resume", "--runs-root", str(tmp_path), "--name", "tiny"])
    assert resume
    gan = cyclegan.CycleGAN(config)
    rng = np.random.default_rng(9)
    pools = {"A": cyclegan.HistoryPool(50, rng), "B": cyclegan.HistoryPool(50, rng)}
    assert checkpoints.load_checkpoint(checkpoint, gan, pools, rng) == (6, 1)  # 6 steps, the first epoch's
    saved = np.load(checkpoint)
    for name, model in gan.models.items():
        for index, weight in enumerate(model.get_weights()):
            np.testing.assert_array_equal(weight, saved[f"weights/{name}/{index}"])
    assert int(gan.combined.optimizer.iterations) == 6
    assert len(pools["A"].images) == 6


@pytest.mark.slow
def test_a_log_file_gets_plain_progress_lines_and_a_terminal_the_bar(logged_run, on_a_terminal):
    """stdout to a file (nohup, a job scheduler): one plain line every --print-every steps, none of the
    bar's carriage returns, backspaces or colour codes; on a terminal Keras' live bar. The file is
    logged_run's (train.main in this process); the terminal is a pty of a train.py process."""
    text = logged_run[1]
    terminal, reader, shown = on_a_terminal
    assert terminal.wait(timeout=300) == 0
    reader.join(timeout=60)
    assert not reader.is_alive()

    assert not set("\x1b\b\r") & set(text)
    progress = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split("  ")[0] for line in progress] == ["step 2/6", "step 4/6", "step 6/6"]
    for line in progress:
        assert re.fullmatch(r"step \d/6  epoch 1/200  D_A \S+  D_B \S+  G \S+  lr 2\.00e-04  \S+ s/step  "
                            r"(ETA|took) \d:\d\d:\d\d", line), line
    assert len(text.encode()) < 1500  # the bar wrote about 240 bytes a step; the summary lines are most of this
    shown = b"".join(shown).decode()
    assert "\r" in shown and "\x1b[" in shown  # Keras' live bar, redrawn in place, in colour
    assert re.search(r"\r6/6 .* - D_A: \S+ - D_B: \S+ - G: \S+", re.sub(r"\x1b\[[0-9;]*m", "", shown))
