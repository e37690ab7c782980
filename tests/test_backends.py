"""Every Keras backend runs the same networks, the same loop and the same saved files: under
KERAS_BACKEND=jax and torch one child process per backend imports networks.py without TensorFlow,
proves the freezing trick by weight snapshots, trains a run and continues one that TensorFlow
checkpointed with train.py's own main, generates with generate.py's, scores with evaluate.py's, converts
a .pth with convert.py's (without TensorFlow's start-up notes), and loads .keras files that TensorFlow
saved to the same outputs. (One child per backend, the two at once: each costs its backend's
start-up and, under JAX, a compile of every network, so the tests below read one child's results.)"""
import json
import os
import re
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cpu_kernels
import inference
import networks
from quiet import keras

from conftest import TINY

pytestmark = pytest.mark.slow  # real processes: the full suite, not the quick tier

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("jax", "torch")

# In the child: networks.py imported first (it must not pull TensorFlow in), then convert.py's main on a
# .pth (TensorFlow's first import: it must be quiet); the freezing trick (each train_on_batch moves only its
# own networks); train.py's main for a fresh run and for a resume of the run that TensorFlow began (the
# resume: one code path, whichever backend wrote the checkpoint); generate.py's main and evaluate.py's; then
# each .keras file TensorFlow saved, loaded as generate.py loads a generator, and its outputs for its saved
# input.
CHILD = """
import sys
import networks
report = {"networks_imported_tensorflow": "tensorflow" in sys.modules}
import json
import numpy as np
dataroot, runs, saved, names, tiny = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5:]
import convert  # before anything imports TensorFlow: convert.py must import it quietly itself
convert.main(["tests/fixtures/reference_legacy.pth", runs + "/converted.keras"])
import cli, quiet, cyclegan, distribute, evaluate, generate, inference, train
cli.setup_logging()
from config import Config

report["backend"] = quiet.backend()
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
train.main(["--runs-root", runs, "--name", "begun_by_tensorflow", "--resume", "--max-steps", "3"])
generate.main(["--run-dir", runs + "/fresh"])
evaluate.evaluate(evaluate.build_parser().parse_args(["--run-dir", runs + "/fresh", "--classifier", runs + "/c.keras"]),
                  lambda images: np.asarray(images).reshape(len(images), -1)[:, :16])  # a tiny feature extractor

for name in names:
    model = inference.load_generator(f"{saved}/{name}.keras")
    np.save(f"{saved}/{name}.{report['backend']}.npy",
            np.asarray(model.predict_on_batch(np.load(f"{saved}/{name}.input.npy"))))
print("REPORT " + json.dumps(report))
"""

# What makes the JAX child quick and proves the same: XLA's CPU code generation unoptimised (each new
# weight shape compiles its initializer: about 2 s each at -O2, a tenth of that at -O0, for the same
# maths), and a compilation cache, so a train function compiled once is not compiled again for each
# new GAN of the same shapes (the freezing check's, then train.py's fresh run and the resumed one).
JAX_QUICK = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip(),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module")
def saved_networks(trained_run, tmp_path_factory):
    """.keras files saved under TensorFlow, each with an input and TensorFlow's outputs for it, by the
    networks' plain path: a tiny residual generator, discriminator and the U-Net's down and up
    convolutions (its whole network costs JAX a compile for each of its many weight shapes) with random
    weights (norms' gammas about 1), from the models that saved them; and the generator that
    TensorFlow's run (conftest's trained_run) saved, as inference.load_generator loads it."""
    cpu_kernels.use(False)  # train.main, in trained_run, turned them on
    folder = tmp_path_factory.mktemp("networks")
    rng = np.random.default_rng(11)
    image = keras.Input(shape=(None, None, 3))
    down = networks.PaddedConv2D(4, 4, pad=1, strides=2, use_bias=False)(image)
    unet_layers = keras.Model(image, networks.UpConv2D(3, 4)(networks.InstanceNormalization()(down)))
    models = {"resnet": (networks.build_generator(4, 1, "transpose", 0.02), (1, 32, 40, 3)),
              "unet_layers": (unet_layers, (2, 16, 24, 3)),
              "discriminator": (networks.build_discriminator(8, "patch70", False, 0.02), (2, 64, 64, 3))}
    expected = {}
    for name, (model, shape) in models.items():
        model.set_weights([rng.normal(1.0 if w.path.endswith("gamma") else 0.0, 0.1, w.shape).astype(np.float32)
                           for w in model.weights])
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        np.save(folder / f"{name}.input.npy", image)
        model.save(folder / f"{name}.keras")
        expected[name] = np.asarray(model.predict_on_batch(image))
    shutil.copy(os.path.join(trained_run, "generator_ab.keras"), folder / "run_generator_ab.keras")
    image = rng.uniform(-1, 1, (1, 32, 40, 3)).astype(np.float32)
    np.save(folder / "run_generator_ab.input.npy", image)
    expected["run_generator_ab"] = np.asarray(
        inference.load_generator(str(folder / "run_generator_ab.keras")).predict_on_batch(image))
    return folder, expected


@pytest.fixture(scope="module")
def children(dataset, trained_run, saved_networks, tmp_path_factory):
    """The child process under each backend (see CHILD) on the tiny dataset, the two run at once (each
    keeps about one core busy); for each backend, the finished process, its report and its runs."""
    folder, expected = saved_networks
    started = {}
    for backend in BACKENDS:
        root = tmp_path_factory.mktemp(backend)
        shutil.copytree(trained_run, root / "runs" / "begun_by_tensorflow")  # each resumes a copy of TensorFlow's run
        env = dict(os.environ, KERAS_BACKEND=backend)
        if backend == "jax":
            env.update(JAX_QUICK, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"))
        command = [sys.executable, "-c", CHILD, dataset, str(root / "runs"), str(folder), json.dumps(list(expected)),
                   *TINY]
        with open(root / "stdout", "w") as stdout, open(root / "stderr", "w") as stderr:  # files: no pipe fills up
            started[backend] = command, root, subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout,
                                                               stderr=stderr)
    done = {}
    try:
        for backend, (command, root, process) in started.items():
            process.wait(timeout=600)
            output = [(root / name).read_text() for name in ("stdout", "stderr")]
            report = next((json.loads(line[7:]) for line in output[0].splitlines() if line.startswith("REPORT ")), None)
            done[backend] = (backend, subprocess.CompletedProcess(command, process.returncode, *output), report,
                             root / "runs")
    finally:
        for _, _, process in started.values():
            process.kill()  # only one still running: after a timeout
    return done


@pytest.fixture(params=BACKENDS)
def child(request, children):
    """One backend's child: the backend, the finished process, its report and its runs."""
    return children[request.param]


def finished(child):
    backend, done, report, _ = child
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["backend"] == backend
    return report


def test_a_backend_trains_resumes_generates_and_continues_another_backends_run(child):
    """Under the child's backend: each train_on_batch moves only its own networks, train.py trains a fresh
    run and resumes the run TensorFlow began, and generate.py translates with the fresh run's generator."""
    backend, done, _, runs_copy = child
    report = finished(child)
    assert report["combined_moves"] == ["generator_ab", "generator_ba"]  # the discriminators frozen
    assert report["discriminator_a_moves"] == ["discriminator_a"]
    assert report["step_moves"] == sorted(["generator_ab", "generator_ba", "discriminator_a", "discriminator_b"])
    assert report["losses_finite"]
    assert f"Keras 3.15.1 on {backend}" in done.stderr
    assert "trained 2 steps" in done.stdout and "trained 1 step in" in done.stdout
    assert "resumed" in done.stderr and "step-000000002.npz at step 2" in done.stderr
    for name, step in (("fresh", 2), ("begun_by_tensorflow", 3)):  # each checkpoint written under the backend
        with np.load(runs_copy / name / "checkpoints" / f"step-00000000{step}.npz") as arrays:
            assert int(arrays["step"]) == step and np.isfinite(arrays["weights/generator_ab/0"]).all()
    assert sorted(os.listdir(runs_copy / "fresh" / "generated" / "AtoB")) == [
        ".generate.json", "img000.png", "img001.png", "img002.png"]
    scores = json.loads((runs_copy / "fresh" / "evaluation.json").read_text())  # evaluate.py under the backend
    assert all(0 <= scores[d]["domain"] <= 1 and np.isfinite(scores[d]["fid"]) for d in ("AtoB", "BtoA"))
    assert (runs_copy / "converted.keras").is_file() and "saved " in done.stdout
    noise = [line for line in done.stderr.splitlines() if re.search("absl|oneDNN|cudart_stub|^I0000", line)]
    assert not noise  # TensorFlow imported quietly, also by convert.py and Keras' saving


def test_networks_imports_no_tensorflow_under_another_backend(child):
    assert finished(child)["networks_imported_tensorflow"] is False


def test_keras_files_saved_under_tensorflow_compute_the_same_under_jax_and_torch(child, saved_networks):
    """What a saved network computes does not depend on the backend that loads it: the generator a
    TensorFlow run saved and tiny networks with random weights, loaded as generate.py loads a generator,
    give the same outputs, to float32 rounding, as under TensorFlow."""
    backend = child[0]
    finished(child)
    folder, expected = saved_networks
    for name, want in expected.items():
        assert np.abs(want).max() > 0.1, name  # outputs of some size: the comparison means something
        np.testing.assert_allclose(np.load(folder / f"{name}.{backend}.npy"), want, rtol=0, atol=1e-5, err_msg=name)
