"""Shared fixtures: tiny image folders made on the fly, and one tiny training run reused by tests."""
import os
from pathlib import Path
import re
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_NETWORK = dict(image_size=32, ngf=4, ndf=8, n_res_blocks=1)  # networks that train in milliseconds
TINY = [arg for name, value in TINY_NETWORK.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
REPO = Path(__file__).resolve().parent.parent
PATIENCE = 300  # seconds a train.py process may take to reach a checkpoint on a slow, shared CPU


def pytest_configure(config):
    """TensorFlow starts now, in its default thread layout, whichever test comes first: train.train's
    layout (one thread per op on 2 cores) would leave a core idle in the many one-chain tests. (A
    hook, not an import-time call: test_distribute's child process imports this file and must
    configure TensorFlow's devices itself.)"""
    from quiet import tensorflow

    tensorflow().constant(0.0)


@pytest.fixture(autouse=True)
def plain_networks():
    """Every test runs networks.py's plain path unless it turns cpu_kernels on itself, and leaves them
    off: train.main turns them on, also in a session fixture set up before the test that asks for it."""
    import cpu_kernels

    cpu_kernels.use(False)
    yield
    cpu_kernels.use(False)


@pytest.fixture(autouse=True)
def no_op_determinism():
    """Every test starts without TensorFlow's op determinism, which train.py --seed turns on for its whole
    process (in-process runs, conftest's trained_run among them, would leave it on: Keras then quietly
    compiles nothing with XLA). Turned off after each test, as bench.py --deterministic turns it off."""
    yield
    from benchmark.tensorflow_extras import set_op_determinism

    set_op_determinism(False)


def runs_slow_tests(request, module_name):
    """Whether this session runs a test of `module_name` marked slow. The processes a module starts early
    (to run beside its other tests) serve its slow tests only: the quick tier starts none of them."""
    return any(item.get_closest_marker("slow") and item.module.__name__ == module_name
               for item in request.session.items)


def smooth_image(rng, height, width):
    """A random smooth colour field: structure for the networks, cheap to make."""
    coarse = rng.uniform(0, 255, (4, 4, 3))
    rows = np.linspace(0, 3, height)
    cols = np.linspace(0, 3, width)
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    image = (coarse[r0][:, c0] * (1 - fr) * (1 - fc) + coarse[r0 + 1][:, c0] * fr * (1 - fc)
             + coarse[r0][:, c0 + 1] * (1 - fr) * fc + coarse[r0 + 1][:, c0 + 1] * fr * fc)
    return image.astype(np.uint8)


def write_images(folder, count, size=(40, 40), seed=0, extension="png"):
    import imageio.v3 as iio

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"img{index:03d}.{extension}")
        iio.imwrite(path, smooth_image(rng, *size))
        paths.append(path)
    return paths


def make_dataset(root, counts=(6, 5, 3, 3), size=(40, 40)):
    for folder, count, seed in zip(("trainA", "trainB", "testA", "testB"), counts, range(4)):
        write_images(os.path.join(root, folder), count, size, seed)
    return str(root)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="session")
def trained_run(dataset, tmp_path_factory):
    """A 2-step run of train.py's main on the tiny dataset; returns its run directory."""
    import train

    runs_root = str(tmp_path_factory.mktemp("runs"))
    train.main(["--dataroot", dataset, "--runs-root", runs_root, "--name", "tiny",
                "--max-steps", "2", "--sample-every", "1", *TINY, "--seed", "0"])
    return os.path.join(runs_root, "tiny")


# ---- scripts in real processes, and the one line they end with on bad input ----------------------

def start(script, args, log_dir):
    """A script in its own process, stdout and stderr to files (a full pipe would block it)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w") as stdout, open(log_dir / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=REPO,
                                   stdout=stdout, stderr=stderr)
    process.log_dir = log_dir
    return process


def output(process):
    return (process.log_dir / "stdout").read_text(), (process.log_dir / "stderr").read_text()


def wait_for(condition, process):
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert process.poll() is None, f"train.py ended early:\n{output(process)[1][-3000:]}"
        assert time.monotonic() < deadline, "train.py did not get there in time"
        time.sleep(0.2)


def newest_step(run_dir):
    import checkpoints

    paths = checkpoints.checkpoint_paths(run_dir)
    return int(re.search(r"step-(\d+)", paths[-1]).group(1)) if paths else -1


def cli_error(main_function, argv):
    """The one line a script (train.main: train.py) ends with on bad input, as run_cli ends its process:
    SystemExit with the message, checked to be one line."""
    import cli

    program = f"{main_function.__module__}.py"
    with pytest.raises(SystemExit) as ended:
        cli.run_cli(lambda: main_function(argv), program)
    message = str(ended.value.code)
    assert message.startswith(f"{program}: error: ") and "\n" not in message, message
    return message


@pytest.fixture
def scripts(request):
    """Runs the scripts' command lines, each as its own `python SCRIPT` would: script_runner's one process
    a session, which starts TensorFlow once."""
    from script_runner import session_scripts

    return session_scripts(request)


def model_options(run_dir):
    """generate.py's options for the two generators of a run folder."""
    return ["--generator", os.path.join(run_dir, "generator_ab.keras"),
            "--reverse-generator", os.path.join(run_dir, "generator_ba.keras")]
