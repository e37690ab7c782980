"""--seed reproduces a run: two train.py processes with the same seed write bit-identical checkpoints
(weights, optimizer slots, history pools, the pool's generator), also when one of them was stopped and
resumed; two without one do not; and the seeded input pipeline alone yields the same batches every time
it is built (bench.py --deterministic times what determinism costs: tests/test_bench.py)."""
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

import data

from conftest import TINY, make_dataset

pytestmark = pytest.mark.slow  # real processes: the full suite, not the quick tier

REPO = Path(__file__).resolve().parent.parent


def start_run(dataroot, runs_root, name, seed, max_steps=8):
    """A real train.py process: 6 images in trainA make a 6-step epoch, so 8 steps write 2 checkpoints."""
    command = [sys.executable, "train.py", "--dataroot", dataroot, "--runs-root", str(runs_root), "--name", name,
               "--max-steps", str(max_steps), "--save-every", "1", "--sample-every", "1000", "--sample-count", "1",
               *TINY]
    if seed is not None:
        command += ["--seed", str(seed)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, name):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, (name, err[-2000:])


def checkpoint_arrays(run_dir):
    """Every array of every checkpoint of a run, by checkpoint file and array name."""
    folder = run_dir / "checkpoints"
    arrays = {}
    for name in sorted(os.listdir(folder)):
        with np.load(folder / name) as checkpoint:
            arrays.update({f"{name}:{key}": checkpoint[key] for key in checkpoint.files})
    return arrays


def differing(first, second):
    assert first.keys() == second.keys()
    return sorted(key for key in first if first[key].shape != second[key].shape
                  or first[key].tobytes() != second[key].tobytes())


def test_seeded_runs_are_bit_identical_and_unseeded_ones_are_not(tmp_path):
    """The second seeded run stops after its first checkpoint and is resumed: it still ends where the
    uninterrupted one does, bit for bit."""
    dataroot = make_dataset(tmp_path / "data")
    seeds = {"seeded": 7, "unseeded1": None, "unseeded2": None}
    # Five processes, each mostly one core: the stopped run and two others first; when it ends, its
    # resume and the last run, so that the cores stay busy until the end.
    stopped = start_run(dataroot, tmp_path / "runs", "resumed", 7, max_steps=6)
    processes = {name: start_run(dataroot, tmp_path / "runs", name, seeds[name]) for name in ("seeded", "unseeded1")}
    finish(stopped, "resumed")
    resume = [sys.executable, "train.py", "--runs-root", str(tmp_path / "runs"), "--name", "resumed", "--resume",
              "--max-steps", "8"]
    processes["resume"] = subprocess.Popen(resume, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes["unseeded2"] = start_run(dataroot, tmp_path / "runs", "unseeded2", seeds["unseeded2"])
    for name, process in processes.items():
        finish(process, name)
    runs = {name: checkpoint_arrays(tmp_path / "runs" / name) for name in [*seeds, "resumed"]}
    checkpoints = {key.split(":")[0] for key in runs["seeded"]}
    assert checkpoints == {"step-000000006.npz", "step-000000008.npz"}
    kinds = {key.split(":")[1].split("/")[0] for key in runs["seeded"]}
    assert {"weights", "optimizer", "pool", "rng"} <= kinds
    assert runs["seeded"]["step-000000008.npz:pool/A"].shape[0] == 8, "the pool holds every fake so far"
    assert differing(runs["seeded"], runs["resumed"]) == []
    changed = differing(runs["unseeded1"], runs["unseeded2"])
    assert any(key.startswith("step-000000008.npz:weights/") for key in changed)
    assert any(key.startswith("step-000000008.npz:pool/") for key in changed)


def batches(dataroot, seed, count=8, start_step=0):
    stream = iter(data.train_dataset(data.train_images(dataroot), 32, 2, seed=seed, start_step=start_step)[0])
    return [np.concatenate([a.numpy(), b.numpy()]) for a, b in (next(stream) for _ in range(count))]


def test_seeded_pipeline_yields_the_same_batches_every_time(tmp_path):
    """Eight batches of 2 from 6 and 5 images: past an epoch, so the reshuffle is covered too."""
    dataroot = make_dataset(tmp_path, counts=(6, 5, 1, 1), size=(50, 60))
    first, again, other = batches(dataroot, 3), batches(dataroot, 3), batches(dataroot, 4)
    for one, two in zip(first, again):
        assert one.tobytes() == two.tobytes()
    assert any(one.tobytes() != two.tobytes() for one, two in zip(first, other))


def test_a_seeded_pipeline_resumed_at_a_step_continues_the_uninterrupted_stream(tmp_path):
    dataroot = make_dataset(tmp_path, counts=(6, 5, 1, 1), size=(50, 60))
    uninterrupted, resumed = batches(dataroot, 3), batches(dataroot, 3, count=3, start_step=5)
    assert [b.tobytes() for b in resumed] == [b.tobytes() for b in uninterrupted[5:]]


def test_augmentation_is_a_function_of_its_seed():
    ramp = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (40, 1, 3))
    crops = [data.preprocess_train(ramp, 32, seed=(5, index)).numpy() for index in range(40)]
    again = [data.preprocess_train(ramp, 32, seed=(5, index)).numpy() for index in range(40)]
    assert all(one.tobytes() == two.tobytes() for one, two in zip(crops, again))
    assert len({crop.tobytes() for crop in crops}) > 2
