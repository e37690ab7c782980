"""Every Keras backend runs the same networks and the same loop: under KERAS_BACKEND=jax and torch a
child process trains, resumes and generates with train.py's and generate.py's own functions, proves
the freezing trick by weight snapshots, and continues a run another backend checkpointed."""
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

import train

from conftest import TINY, make_dataset

pytestmark = pytest.mark.slow  # real processes: the full suite, not the quick tier

REPO = Path(__file__).resolve().parent.parent

# In the child: the freezing trick (each train_on_batch moves only its own networks), then train.py's
# main for a fresh run, a resume of the run that TensorFlow began, and generate.py's main.
CHILD = """
import json, sys
import numpy as np
import cli, quiet, cyclegan, distribute, generate, train
cli.setup_logging()
from config import Config

dataroot, runs, tiny = sys.argv[1], sys.argv[2], sys.argv[3:]
report = {"backend": quiet.backend()}
gan = cyclegan.build_gan(Config(image_size=32, ngf=4, ndf=8, n_res_blocks=1), distribute.make_strategy("none"))
snapshot = lambda: {name: [w.copy() for w in model.get_weights()] for name, model in gan.models.items()}
moved = lambda before: sorted(name for name, model in gan.models.items()
                              if any(not np.array_equal(a, b) for a, b in zip(before[name], model.get_weights())))
rng = np.random.default_rng(0)
real_a, real_b = (rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32") for _ in "AB")
pools = [cyclegan.HistoryPool(50, rng) for _ in "AB"]
before = snapshot()
gan.combined.train_on_batch([real_a, real_b], cyclegan.networks.combined_targets(real_a, real_b, gan.patch))
report["combined_moves"] = moved(before)
before = snapshot()
cyclegan.train_discriminator(gan.discriminator_a, real_a, real_b, gan.patch)
report["discriminator_a_moves"] = moved(before)
before = snapshot()
losses = gan.train_step(real_a, real_b, *pools)
report["step_moves"] = moved(before)
report["losses_finite"] = all(np.isfinite(v) for v in losses.values())

train.main(["--dataroot", dataroot, "--runs-root", runs, "--name", "fresh", *tiny, "--max-steps", "2"])
train.main(["--runs-root", runs, "--name", "fresh", "--resume", "--max-steps", "3"])
train.main(["--runs-root", runs, "--name", "begun_by_tensorflow", "--resume", "--max-steps", "3"])
generate.main(["--run-dir", runs + "/fresh"])
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def begun(tmp_path_factory):
    """A dataset, and a run that TensorFlow (this process) trained for 2 steps."""
    root = tmp_path_factory.mktemp("backends")
    dataroot = make_dataset(root / "data", counts=(2, 2, 1, 1), size=(36, 36))
    train.main(["--dataroot", dataroot, "--runs-root", str(root / "runs"), "--name", "begun_by_tensorflow", *TINY,
                "--max-steps", "2"])
    return root, dataroot


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_backend_trains_resumes_generates_and_continues_another_backends_run(begun, backend, tmp_path):
    root, dataroot = begun
    runs_copy = tmp_path / "runs"  # each backend resumes a copy of TensorFlow's run
    shutil.copytree(root / "runs" / "begun_by_tensorflow", runs_copy / "begun_by_tensorflow")
    done = subprocess.run([sys.executable, "-c", CHILD, dataroot, str(runs_copy), *TINY], cwd=REPO,
                          env=dict(os.environ, KERAS_BACKEND=backend), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert report["backend"] == backend
    assert report["combined_moves"] == ["generator_ab", "generator_ba"]  # the discriminators frozen
    assert report["discriminator_a_moves"] == ["discriminator_a"]
    assert report["step_moves"] == sorted(["generator_ab", "generator_ba", "discriminator_a", "discriminator_b"])
    assert report["losses_finite"]
    assert f"Keras 3.15.1 on {backend}" in done.stderr
    assert "trained 2 steps" in done.stdout and "trained 1 step in" in done.stdout
    assert "resumed" in done.stderr and "step-000000002.npz at step 2" in done.stderr
    for name in ("fresh", "begun_by_tensorflow"):
        checkpoint = runs_copy / name / "checkpoints" / "step-000000003.npz"
        with np.load(checkpoint) as arrays:
            assert int(arrays["step"]) == 3 and np.isfinite(arrays["weights/generator_ab/0"]).all()
    assert sorted(os.listdir(runs_copy / "fresh" / "generated" / "AtoB")) == [".generate.json", "img000.png"]


def test_a_generator_saved_under_one_backend_translates_the_same_under_the_others(begun, tmp_path):
    """The .keras file TensorFlow saved, loaded by each backend: the same translation to float32 rounding."""
    import inference

    root, _ = begun
    path = root / "runs" / "begun_by_tensorflow" / "generator_ab.keras"
    image = np.random.default_rng(1).uniform(-1, 1, (1, 32, 40, 3)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    expected = np.asarray(inference.load_generator(str(path)).predict_on_batch(image))
    script = ("import sys, numpy as np, inference; g = inference.load_generator(sys.argv[1]); "
              "np.save(sys.argv[3], np.asarray(g.predict_on_batch(np.load(sys.argv[2]))))")
    for backend in ("jax", "torch"):
        out = tmp_path / f"{backend}.npy"
        done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "image.npy"), str(out)],
                              cwd=REPO, env=dict(os.environ, KERAS_BACKEND=backend), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-5, err_msg=backend)
