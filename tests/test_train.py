import json
import os
import re
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tensorflow as tf

import checkpoints
from config import from_command_line
import cyclegan
import train

from conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_TAGS = ["loss/D_A", "loss/D_B", "loss/adversarial_a", "loss/adversarial_b", "loss/cycle_a",
             "loss/cycle_b", "loss/identity_a", "loss/identity_b", "loss/G_total"]


def events(run_dir):
    accumulator = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator, tag):
    return [e.step for e in accumulator.Tensors(tag)]


def test_two_step_run_writes_tags_checkpoint_generators_and_config(trained_run, dataset):
    accumulator = events(trained_run)
    tags = accumulator.Tags()["tensors"]
    for tag in LOSS_TAGS + ["learning_rate", "samples/AtoB", "samples/BtoA"]:
        assert tag in tags
    assert scalar_steps(accumulator, "loss/D_A") == [1, 2]
    assert all(np.isfinite(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors("loss/G_total"))
    grid = tf.make_ndarray(accumulator.Tensors("samples/AtoB")[-1].tensor_proto)
    assert (int(grid[0]), int(grid[1])) == (3 * 250, 3 * 250)  # 3 test images x (real, translated, reconstructed)
    assert checkpoints.checkpoint_paths(trained_run)[-1].endswith("step-000000002.npz")
    for name in ("generator_ab.keras", "generator_ba.keras", "config.json"):
        assert os.path.isfile(os.path.join(trained_run, name))
    config = json.load(open(os.path.join(trained_run, "config.json")))
    assert config["dataroot"] == dataset and config["ngf"] == 4 and config["lambda_cycle"] == 10.0
    samples = set(os.listdir(os.path.join(trained_run, "samples")))
    assert {"AtoB_step0000002.png", "BtoA_step0000002.png"} <= samples


def test_resume_restores_identical_weights_and_continues_the_step_count(trained_run, tmp_path):
    import shutil
    run_dir = str(tmp_path / "tiny")
    shutil.copytree(trained_run, run_dir)
    checkpoint = checkpoints.checkpoint_paths(run_dir)[-1]

    config, resume = from_command_line(["--resume", "--runs-root", str(tmp_path), "--name", "tiny"])
    assert resume
    gan = cyclegan.CycleGAN(config)
    rng = np.random.default_rng(9)
    pools = {"A": cyclegan.HistoryPool(50, rng), "B": cyclegan.HistoryPool(50, rng)}
    assert checkpoints.load_checkpoint(checkpoint, gan, pools, rng) == (2, 0)
    saved = np.load(checkpoint)
    for name, model in gan.models.items():
        for index, weight in enumerate(model.get_weights()):
            np.testing.assert_array_equal(weight, saved[f"weights/{name}/{index}"])
    assert int(gan.combined.optimizer.iterations) == 2
    assert len(pools["A"].images) == 2

    written = train.train(*from_command_line(["--resume", "--runs-root", str(tmp_path), "--name", "tiny",
                                              "--max-steps", "4"]), verbose=0)
    assert written["step"] == 4
    assert checkpoints.checkpoint_paths(run_dir)[-1].endswith("step-000000004.npz")
    assert sorted(scalar_steps(events(run_dir), "loss/D_A")) == [1, 2, 3, 4]


def test_a_log_file_gets_plain_progress_lines_and_a_terminal_the_bar(dataset, tmp_path):
    """stdout to a file (nohup, a job scheduler): one plain line every --print-every steps, none of the
    bar's carriage returns, backspaces or colour codes; on a terminal Keras' live bar."""
    command = [sys.executable, "train.py", "--dataroot", dataset, "--runs-root", str(tmp_path), *TINY,
               "--max-steps", "6", "--print-every", "2"]
    with open(tmp_path / "log.txt", "w") as log:
        logged = subprocess.Popen(command + ["--name", "logged"], cwd=ROOT, stdout=log, stderr=subprocess.DEVNULL)
    master, slave = os.openpty()
    terminal = subprocess.Popen(command + ["--name", "terminal"], cwd=ROOT, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal's other end closed: the process has ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert logged.wait(timeout=300) == 0 and terminal.wait(timeout=300) == 0

    text = (tmp_path / "log.txt").read_text()
    assert not set("\x1b\b\r") & set(text)
    progress = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split("  ")[0] for line in progress] == ["step 2/6", "step 4/6", "step 6/6"]
    for line in progress:
        assert re.fullmatch(r"step \d/6  epoch 1/200  D_A \S+  D_B \S+  G \S+  lr 2\.00e-04  \S+ s/step  "
                            r"(ETA|took) \d:\d\d:\d\d", line), line
    assert len(text.encode()) < 1500  # the bar wrote about 240 bytes a step; the summary lines are most of this
    shown = shown.decode()
    assert "\r" in shown and "\x1b[" in shown  # Keras' live bar, redrawn in place, in colour
    assert re.search(r"\r6/6 .* - D_A: \S+ - D_B: \S+ - G: \S+", re.sub(r"\x1b\[[0-9;]*m", "", shown))
