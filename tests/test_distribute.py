"""train.py --distribute / --mixed-precision on the CPU: mirrored over two logical CPU devices,
two multi-worker processes on 127.0.0.1, and steps under the mixed_float16 and mixed_bfloat16 policies.

The logical devices must be configured before TensorFlow starts, and the multi-worker strategy
needs a fresh process too, so those parts run in subprocesses: this file, run as a script, is the
mirrored child; train.py itself is the multi-worker child. Each child spends seconds of mostly one
core on imports and tracing, so they all start at once, at this file's first test (the `children`
fixture), and run while the in-process tests below run; each test then waits for its own. The
tests are in that order: thread layouts, the in-process steps, multi-worker, mirrored.
"""
import json
import logging
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_NETWORK, make_dataset  # first: it puts the repository on sys.path for the child
import cli
from config import BENCH, Config, from_command_line
import cpu_kernels
import cyclegan
import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(TINY_NETWORK, pool_size=2, seed=0)
TINY_ARGS = ["--image-size", "32", "--ngf", "4", "--ndf", "8", "--n-res-blocks", "1", "--pool-size", "2",
             "--seed", "0", "--sample-count", "2", "--sample-every", "1000"]
# Mirrored replicas each reduce half the batch and the all-reduce adds the halves: the same sums in
# another order, so float32 rounding differs. Losses agree to 1e-5 relative; after Adam's first step
# (about lr = 2e-4 per weight, g / (|g| + epsilon) of it) weights agree to a tenth of a step, but for
# the few whose gradient is near rounding (one in 1e5 with AVX2's kernels), which differ by at most a
# flipped step: a replica that trained on the wrong images, or applied its own gradient, moves most.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 2e-5
OFF_FRACTION = 1e-4
SUBPROCESS_TIMEOUT = 300
# The loss scale starts at 2**15: the first steps overflow float16, are skipped and halve it.
MIXED_PRECISION_STEPS = 8
# The first activations of the book's 128x128 step and of the paper's 256x256 one (set_training_threads).
SMALL_STEP = cpu_kernels.first_activation_elements(BENCH["S"])
LARGE_STEP = cpu_kernels.first_activation_elements(BENCH["P"])
# A fresh process's thread layout: what set_training_threads returns, the pools TensorFlow then has,
# and what it returns once TensorFlow has started (the layout in force).
THREADS_CHILD = ("import json, sys, cpu_kernels; from quiet import tensorflow; tf = tensorflow(); "
                 "layout = cpu_kernels.set_training_threads(int(sys.argv[1])); "
                 "pools = [tf.config.threading.get_intra_op_parallelism_threads(), "
                 "tf.config.threading.get_inter_op_parallelism_threads()]; tf.constant(1.0) + 1; "
                 "print(json.dumps([layout, pools, cpu_kernels.set_training_threads(int(sys.argv[1]))]))")


def launch(args, log_dir, env=None):
    """A Python process in the repository, its stdout and stderr to files (a full pipe would stall it
    while it waits for its test)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout", "w") as stdout, open(log_dir / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    process.log_dir = log_dir
    return process


def finished(process):
    """(exit status, stdout, stderr) of a launched process, once it has ended."""
    try:
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, (process.log_dir / "stdout").read_text(), (process.log_dir / "stderr").read_text()


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def children(request, tmp_path_factory):
    """The child processes of this file's selected tests, started at once (see the module's docstring):
    the mirrored child, two multi-worker train.py processes on 127.0.0.1, the thread-layout children."""
    selected = " ".join(item.name for item in request.session.items
                        if getattr(item, "module", None) is request.module)
    root = tmp_path_factory.mktemp("children")
    started = SimpleNamespace(root=root, mirrored=None, workers=[], threads={})
    if "test_mirrored_" in selected:
        started.mirrored = launch([os.path.abspath(__file__), root / "mirrored"], root / "mirrored")
    if "test_multiworker_only_" in selected:
        dataroot = make_dataset(root / "data", counts=(4, 4, 4, 4), size=(36, 36))
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        for index in range(2):
            task = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            started.workers.append(launch(
                ["train.py", "--dataroot", dataroot, "--runs-root", root / f"runs{index}", "--name", "mw",
                 "--distribute", "multiworker", "--batch-size", "2", "--max-steps", "2", *TINY_ARGS],
                root / f"worker{index}", env=dict(os.environ, TF_CONFIG=task)))
    if "test_training_threads_" in selected:
        env = {name: value for name, value in os.environ.items() if not name.startswith("TF_NUM_")}
        for name, elements, more in (("small", SMALL_STEP, {}), ("large", LARGE_STEP, {}),
                                     ("users", LARGE_STEP, {"TF_NUM_INTEROP_THREADS": "3"})):
            started.threads[name] = launch(["-c", THREADS_CHILD, elements], root / f"threads-{name}",
                                           env=dict(env, **more))
    yield started
    for process in [started.mirrored, *started.workers, *started.threads.values()]:
        if process is not None:
            process.kill()  # those a failed test left running


# ---- threads -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_threads_give_a_small_step_two_chains_and_a_large_one_all_cores_per_op(children, monkeypatch):
    """In a fresh process (TensorFlow fixes its thread pools when it starts): a small step gets half of
    the cores per op, two ops at a time, and a large one (the paper's 256x256 network) all of them, one
    op at a time; nothing over the user's own setting, nor once TensorFlow has started (in this
    process, conftest.py starts it in its default layout before any test)."""
    assert SMALL_STEP < cpu_kernels.LARGE_STEP_ELEMENTS <= LARGE_STEP
    results = [finished(children.threads[name]) for name in ("small", "large", "users")]
    assert all(returncode == 0 for returncode, _, _ in results), [stderr[-3000:] for _, _, stderr in results]
    (layout, pools, again), (big_layout, big_pools, big_again), users = (
        json.loads(stdout.splitlines()[-1]) for _, stdout, _ in results)
    cores = len(os.sched_getaffinity(0))
    assert layout == pools == again == [max(1, cores // 2), 2]
    assert big_layout == big_pools == big_again == [cores, 1]
    assert users == [None, [0, 0], None]

    from quiet import tensorflow

    tf = tensorflow()
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(name, raising=False)
    tf.constant(1.0) + 1  # started, whatever ran before
    started = [cpu_kernels.set_training_threads(SMALL_STEP),
               [tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads()],
               cpu_kernels.set_training_threads(SMALL_STEP)]
    assert started == [None, [0, 0], None]


# ---- mixed precision ---------------------------------------------------------------------------

@pytest.mark.slow
def test_mixed_precision_step_keeps_outputs_float32_and_losses_finite():
    import keras
    import tensorflow as tf


    config = Config(**TINY, mixed_precision="float16")
    try:
        gan = cyclegan.build_gan(config, distribute.make_strategy("none"))
        assert gan.generator_ab.get_layer("c7s1_conv").compute_dtype == "float16"
        assert isinstance(gan.combined.optimizer, keras.optimizers.LossScaleOptimizer)
        real = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
        outputs = gan.combined([real, real])
        assert [o.dtype for o in outputs] == [tf.float32] * 8
        assert gan.generator_ab(real).dtype == tf.float32
        pools = [cyclegan.HistoryPool(2, np.random.default_rng(0)) for _ in "AB"]
        before = gan.generator_ab.get_weights()
        optimizer = gan.combined.optimizer
        for _ in range(MIXED_PRECISION_STEPS):
            losses = gan.train_step(real, real, *pools)
            assert all(np.isfinite(value) for value in losses.values()), losses
            if any(np.abs(a - b).max() > 0 for a, b in zip(before, gan.generator_ab.get_weights())):
                break
        else:
            raise AssertionError(f"no generator update in {MIXED_PRECISION_STEPS} steps")
        assert float(optimizer.dynamic_scale) < optimizer.initial_scale, "overflowing steps lower the scale"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_bfloat16_step_trains_without_loss_scaling_and_auto_picks_by_device():
    import keras
    import tensorflow as tf


    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert distribute.precision_policy("auto") == ("mixed_float16" if on_gpu else "mixed_bfloat16")
    assert distribute.precision_policy(None) == "float32"
    config = Config(**TINY, mixed_precision="bfloat16")
    try:
        gan = cyclegan.build_gan(config, distribute.make_strategy("none"))
        assert gan.generator_ab.get_layer("c7s1_conv").compute_dtype == "bfloat16"
        assert gan.generator_ab.get_layer("c7s1_norm").gamma.dtype == "float32"
        assert not isinstance(gan.combined.optimizer, keras.optimizers.LossScaleOptimizer)
        real = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
        assert gan.generator_ab(real).dtype == tf.float32
        pools = [cyclegan.HistoryPool(2, np.random.default_rng(0)) for _ in "AB"]
        before = {name: model.get_weights() for name, model in gan.models.items()}
        losses = gan.train_step(real, real, *pools)
        assert all(np.isfinite(value) for value in losses.values()), losses
        for name, model in gan.models.items():
            assert any(np.abs(a - b).max() > 0 for a, b in zip(before[name], model.get_weights())), name
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_jit_step_compiles_every_model_and_trains_all_four_networks():

    gan = cyclegan.build_gan(Config(**TINY, jit=True), distribute.make_strategy("none"))
    real = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    pools = [cyclegan.HistoryPool(2, np.random.default_rng(0)) for _ in "AB"]
    before = {name: model.get_weights() for name, model in gan.models.items()}
    losses = gan.train_step(real, real, *pools)
    assert all(np.isfinite(value) for value in losses.values()), losses
    assert all(model.jit_compile for model in (gan.combined, gan.discriminator_a, gan.discriminator_b))
    for name, model in gan.models.items():
        assert any(np.abs(a - b).max() > 0 for a, b in zip(before[name], model.get_weights())), name


# ---- multi-worker ------------------------------------------------------------------------------

def test_multiworker_without_tf_config_is_a_usage_error(monkeypatch):

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(cli.UsageError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(cli.UsageError, match="needs the TF_CONFIG environment variable"):
        distribute.make_strategy("multiworker")


@pytest.mark.slow
def test_multiworker_only_the_chief_writes_and_its_checkpoint_resumes(children, capsys, caplog):
    """Two train.py workers train one run; the chief's checkpoint then resumes on one device (in this
    process: the resume needs no process of its own)."""
    from tensorflow.python.framework import config as framework_config  # the public API only turns it on

    import train

    for worker in children.workers:
        returncode, stdout, stderr = finished(worker)
        assert returncode == 0, stderr[-3000:]
        assert "trained 2 steps" in stdout

    chief_run = children.root / "runs0" / "mw"
    assert [p.name for p in (chief_run / "checkpoints").iterdir()] == ["step-000000002.npz"]
    assert list(chief_run.glob("events.out.tfevents.*"))
    assert (chief_run / "generator_ab.keras").exists()
    assert not (children.root / "runs1").exists(), "the non-chief worker must leave no files"

    caplog.set_level(logging.INFO, logger="cyclegan")
    capsys.readouterr()
    determinism = framework_config.is_op_determinism_enabled()
    try:
        train.main(["--resume", "--runs-root", str(children.root / "runs0"), "--name", "mw", "--distribute", "none",
                    "--max-steps", "3"])
    finally:
        if not determinism:  # the run's --seed turned it on for the whole process
            framework_config.disable_op_determinism()
    stdout = capsys.readouterr().out
    assert "at step 2" in caplog.text
    assert "trained 1 step in" in stdout and "(step 3)" in stdout  # steps 3-3 of this process


# ---- mirrored ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_mirrored_splits_the_global_batch_and_matches_one_device(children):
    """train.py's run mirrored over two logical CPUs: each replica trains on half of the global batch,
    the replicas stay identical, the first step matches one device's, and a checkpoint of the run
    loads back into both replicas."""
    returncode, _, stderr = finished(children.mirrored)
    assert returncode == 0, stderr[-3000:]
    report = json.loads((children.root / "mirrored" / "report.json").read_text())

    assert report["replicas"] == 2
    assert report["probe_batch_sizes"] == [2, 2], "each replica must see half of the global batch of 4"
    assert len(report["replica_spread"]) == 3
    # Exact: the replicas are logical devices of one CPU, and each applies the one all-reduced gradient
    # (reduced on one device, then copied) to identical copies of the weights with the same kernels.
    assert all(spread == 0.0 for spread in report["replica_spread"]), report["replica_spread"]
    single, mirrored = report["first_losses"]["none"], report["first_losses"]["mirrored"]
    assert set(single) == set(mirrored) and len(single) == 9
    for name in single:
        assert abs(single[name] - mirrored[name]) <= LOSS_TOLERANCE * max(1.0, abs(single[name])), name
    assert report["weight_change"] > 5 * WEIGHT_TOLERANCE, "the first step must move every weight"
    assert report["weights_off"] <= OFF_FRACTION * report["weight_count"], report["weights_off"]
    assert report["weight_difference"] <= 2 * report["learning_rate"]
    assert len(report["free_biases"]) == 2 * 7 + 2 * 3
    assert report["free_bias_difference"] <= 2 * report["learning_rate"]
    assert report["predicted"]["shape"] == [3, 32, 32, 3], "an odd batch predicts its own rows"
    assert report["predicted"]["difference"] <= WEIGHT_TOLERANCE
    assert report["cli"]["step"] == 3
    assert report["moved_since"] > 0, "step 3 must have moved the weights of step 2's checkpoint"
    assert report["resumed"] == {"at": [2, 1], "spread": 0.0, "difference": 0.0}
    assert len(report["refusals"]) == 2
    assert report["refusals"][0].startswith("--batch-size 3: the global batch is split across 2 replicas")
    assert report["refusals"][1].startswith("--jit: XLA cannot compile a step that spans 2 replicas")
    assert os.path.exists(report["cli"]["checkpoint"])


def mirrored_child(out):
    """Runs in a fresh process: two logical CPU devices; train.py's training mirrored over them, watched
    step by step; then its first step again on one device, from the same weights on the same images."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    sys.path.insert(0, ROOT)
    import checkpoints
    import distribute
    import train

    watched = dict(spreads=[])
    build_gan = cyclegan.build_gan

    def watched_build_gan(config, strategy):
        """cyclegan.build_gan, and each step of the CycleGAN it builds, as train.train calls them."""
        gan = build_gan(config, strategy)
        watched.update(config=config, strategy=strategy, gan=gan, initial=weights_by_name(gan))
        train_step = gan.train_step

        def watched_step(real_a, real_b, pool_a, pool_b):
            losses = train_step(real_a, real_b, pool_a, pool_b)
            watched["spreads"].append(replica_spread(strategy, gan))
            if "first" not in watched:
                watched["first"] = dict(batch=(real_a.copy(), real_b.copy()), weights=weights_by_name(gan),
                                        losses={name: float(value) for name, value in losses.items()})
            return losses

        gan.train_step = watched_step
        return gan

    cyclegan.build_gan = watched_build_gan
    dataroot = make_dataset(os.path.join(out, "data"), counts=(4, 4, 4, 4), size=(36, 36))
    # --cpu-kernels off: mirrored training's real case is several GPUs, where they never apply (the
    # multi-worker test trains with them).
    trained = train.train(*from_command_line(["--dataroot", dataroot, "--runs-root", os.path.join(out, "runs"),
                                              "--name", "mirrored", "--distribute", "mirrored", "--batch-size", "2",
                                              "--max-steps", "3", "--save-every", "1", "--cpu-kernels", "off",
                                              *TINY_ARGS]), verbose=0)
    cyclegan.build_gan = build_gan
    config, strategy, mirrored, first = watched["config"], watched["strategy"], watched["gan"], watched["first"]

    single = cyclegan.build_gan(config, distribute.make_strategy("none"))
    for model_name, model in single.models.items():
        for weight in model.weights:
            weight.assign(watched["initial"][f"{model_name}/{weight.path}"])
    single_initial = weights_by_name(single)
    rng = np.random.default_rng(0)
    single_losses = single.train_step(*first["batch"], *(cyclegan.HistoryPool(config.pool_size, rng) for _ in "AB"))
    single_weights = weights_by_name(single)
    refusals = []
    for bad in (dict(batch_size=3), dict(jit=True)):
        try:
            cyclegan.build_gan(config.replace(**bad), strategy)
        except cli.UsageError as error:
            refusals.append(str(error))
    apart = {name: np.abs(w - first["weights"][name]) for name, w in single_weights.items()}
    differences = {name: float(difference.max()) for name, difference in apart.items()}
    free = sorted(biases_normalised_away(single))

    # The run's checkpoint of step 2 into its CycleGAN of step 3: both replicas take the file's weights.
    earlier = checkpoints.checkpoint_paths(trained["run_dir"])[0]
    with np.load(earlier) as saved:
        stored = [saved[f"weights/generator_ab/{i}"] for i in range(len(mirrored.generator_ab.weights))]
    moved = max(float(np.abs(w - s).max()) for w, s in zip(mirrored.generator_ab.get_weights(), stored))
    resumed_at = checkpoints.load_checkpoint(earlier, mirrored, {d: cyclegan.HistoryPool(config.pool_size, rng)
                                                                  for d in "AB"}, rng)
    resumed_difference = max(float(np.abs(w - s).max()) for w, s in zip(mirrored.generator_ab.get_weights(), stored))
    odd_batch = first["batch"][0][[0, 1, 0]]
    predicted = mirrored.generator_ab.predict_on_batch(odd_batch)
    report = dict(
        predicted={"shape": list(predicted.shape),
                   "difference": float(np.abs(predicted - mirrored.generator_ab(odd_batch)).max())},
        resumed={"at": resumed_at, "spread": replica_spread(strategy, mirrored), "difference": resumed_difference},
        moved_since=moved,
        replicas=strategy.num_replicas_in_sync,
        probe_batch_sizes=probe_batch_sizes(strategy, global_batch=4),
        replica_spread=watched["spreads"],
        first_losses={"mirrored": first["losses"], "none": {name: float(v) for name, v in single_losses.items()}},
        weight_change=min(float(np.abs(w - single_initial[name]).max())
                          for name, w in single_weights.items() if name not in free),
        weight_difference=max(d for name, d in differences.items() if name not in free),
        weights_off=sum(int((apart[name] > WEIGHT_TOLERANCE).sum()) for name in apart if name not in free),
        weight_count=sum(apart[name].size for name in apart if name not in free),
        free_biases=free,
        free_bias_difference=max(differences[name] for name in free),
        cli={"step": trained["step"], "checkpoint": trained["checkpoint"]},
        refusals=refusals,
        learning_rate=config.lr,
    )
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)


def weights_by_name(gan):
    return {f"{name}/{w.path}": w.numpy() for name, model in gan.models.items() for w in model.weights}


def biases_normalised_away(gan):
    """The biases of convolutions followed by an instance norm ("res1_a_conv" before "res1_a_norm",
    "conv2" before "conv2_norm"). Their true gradient is zero, so Adam's first step, about
    lr * g / |g|, moves them by rounding noise in either direction: no device comparison holds there."""
    names = set()
    for name, model in gan.models.items():
        layer_names = {layer.name for layer in model.layers}
        for layer in model.layers:
            if f"{layer.name.removesuffix('_conv')}_norm" in layer_names and getattr(layer, "bias", None) is not None:
                names.add(f"{name}/{layer.bias.path}")
    return names


def replica_spread(strategy, gan):
    """The largest difference between any variable's copies on the replicas (0 when in sync)."""
    spread = 0.0
    for model in gan.models.values():
        for variable in model.weights:
            copies = [np.asarray(c) for c in strategy.experimental_local_results(variable.value)]
            spread = max([spread] + [float(np.abs(c - copies[0]).max()) for c in copies[1:]])
    return spread


def probe_batch_sizes(strategy, global_batch):
    """The batch size each replica's train step is traced with, seen by a layer that records it."""
    import keras
    import tensorflow as tf

    seen = []

    class BatchProbe(keras.layers.Layer):
        def call(self, x):
            if not tf.distribute.in_cross_replica_context():
                seen.append(x.shape[0])
            return x

    with strategy.scope():
        probe = keras.Sequential([keras.Input((3,)), BatchProbe(), keras.layers.Dense(1)])
        probe.compile(optimizer="sgd", loss="mse")
    distribute.split_batches(probe, strategy)
    probe.train_on_batch(np.zeros((global_batch, 3), np.float32), np.zeros((global_batch, 1), np.float32))
    return seen


if __name__ == "__main__":
    mirrored_child(sys.argv[1])
