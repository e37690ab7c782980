"""Benchmark one CycleGAN training iteration: the project's loop beside a fused step and PyTorch.

    python bench.py --config S --steps 10
    python bench.py --config P --steps 3 --warmup 1 --rounds 3 --torch /tmp/torchvenv/bin/python
    python bench.py --layers --config S --torch /tmp/torchvenv/bin/python

Prints, from one run: seconds per iteration of cyclegan.CycleGAN.train_step (the code train.py runs) and
of a plain fused GradientTape step over the same networks (the yardstick), their analytic FLOPs against
this machine's matmul/conv peak measured in the same run, generator inference images/s, input-pipeline
images/s on a folder of JPEGs (data.train_dataset) and peak resident memory. With --torch, the PyTorch
reference step (../shared/bench/torch_reference_step.py, run by that interpreter) is timed back to back.
The last line, `BENCH {...}`, is the same report as JSON.

--layers times instead each kind of layer of the step's networks alone, forward and forward+backward at
the shape it sees (batch 1), beside the same torch.nn layers (bench_torch_layers.py), weighted by how
often one iteration runs it: where the step's time goes, and where it goes against PyTorch's.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time

import numpy as np

import cli
import cyclegan
import data
import distribute
import networks
from config import BENCH
from cli import UsageError
from distribute import tf
import keras  # noqa: E402  (after distribute: TensorFlow imported quietly)
from keras import layers  # noqa: E402

STEPS = 10
ROUNDS = 1
WARMUP = 2
PIPELINE_IMAGES = 64
HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "..", "shared", "bench", "torch_reference_step.py")
TORCH_LAYERS_SCRIPT = os.path.join(HERE, "bench_torch_layers.py")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--config", choices=sorted(BENCH), default="S",
                   help="S: 128x128, ngf 32, 6 blocks; P: 256x256, ngf 64, 9 blocks")
    p.add_argument("--steps", type=cli.positive_int, default=STEPS, help="timed iterations of each step per round")
    p.add_argument("--rounds", type=cli.positive_int, default=ROUNDS,
                   help="rounds of PyTorch, loop and fused timings in turn; each ratio is the median of "
                        "the rounds' ratios, so a slow spell of the machine hits all three alike")
    p.add_argument("--warmup", type=cli.non_negative_int, default=WARMUP,
                   help="untimed iterations first (the first one traces and compiles)")
    p.add_argument("--image-size", type=cli.image_size, help="override the config's image size")
    p.add_argument("--ngf", type=cli.positive_int, help="override the config's generator filters")
    p.add_argument("--ndf", type=cli.positive_int, help="override the config's discriminator filters")
    p.add_argument("--n-res-blocks", type=cli.positive_int, help="override the config's residual blocks")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train functions (train.py --jit)")
    cli.add_mixed_precision_option(
        p, "run everything in train.py --mixed-precision's 16-bit policy (the PyTorch yardstick stays float32)")
    p.add_argument("--dataroot", help="JPEG dataset for the input-pipeline figure (default: synthetic JPEGs)")
    p.add_argument("--pipeline-images", type=cli.positive_int, default=PIPELINE_IMAGES,
                   help="images read per domain when timing the input pipeline")
    p.add_argument("--torch", metavar="PYTHON",
                   help="interpreter with torch installed: also time the PyTorch reference step")
    p.add_argument("--torch-script", default=TORCH_SCRIPT, help="the PyTorch yardstick script")
    p.add_argument("--layers", action="store_true",
                   help="time each layer kind of the networks alone (forward, forward+backward) and Adam's "
                        "update instead of whole steps; with --torch, beside PyTorch's layers")
    p.add_argument("--deterministic", action="store_true",
                   help="also time the project loop with TensorFlow's op determinism on (what train.py --seed "
                        "turns on), in turn with the plain loop in every round")
    return p


def parse_config(argv=None):
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("image_size", "ngf", "ndf", "n_res_blocks") if getattr(args, k) is not None}
    if args.layers:
        mixed = [f"--{name.replace('_', '-')}" for name in ("jit", "mixed_precision", "deterministic", "dataroot")
                 if getattr(args, name)]
        if mixed:
            raise UsageError(f"--layers times float32 layers alone: drop {', '.join(mixed)}")
    if args.torch and overrides and not args.layers:
        raise UsageError("--torch compares only the plain S and P configs: drop "
                              + ", ".join(f"--{k.replace('_', '-')}" for k in overrides))
    if args.torch and shutil.which(args.torch) is None:
        raise UsageError(f"--torch {args.torch}: no such interpreter")
    if args.torch and not os.path.isfile(args.torch_script):
        raise UsageError(f"--torch-script {args.torch_script}: not found")
    config = BENCH[args.config].replace(**overrides, jit=args.jit, mixed_precision=args.mixed_precision or False)
    return args, config


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function, steps, warmup):
    """Seconds of each of `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return np.array(times)


def set_op_determinism(enabled):
    """Turns TensorFlow's op determinism on or off for the ops run next (the public API only turns it on)."""
    from tensorflow.python.framework import config as framework_config

    (framework_config.enable_op_determinism if enabled else framework_config.disable_op_determinism)()


def summary(times):
    return {"median_s": float(np.median(times)), "min_s": float(times.min()), "max_s": float(times.max())}


# ---- FLOPs and the machine's peak ---------------------------------------------------------------

def conv_macs(model, height, width, batch=1):
    """Multiply-accumulates of one forward pass, from each convolution's kernel and output size."""
    shape = (batch, height, width, 3)
    total = 0
    for layer in model.layers[1:]:
        if isinstance(layer, keras.layers.Add):
            continue
        out = layer.compute_output_shape(shape)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            spatial = shape if isinstance(layer, keras.layers.Conv2DTranspose) else out
            kernel = int(np.prod(layer.kernel.shape))
            total += batch * spatial[1] * spatial[2] * kernel
        shape = out
    return total


def iteration_flops(generator, discriminator, size):
    """FLOPs of one iteration as the reference does it (batch 1): six generator passes and their
    backward (2x), discriminators forward + input gradient in the generator step, and forward +
    backward on real and fake in the discriminator step. Counting each translation once makes this
    the minimal work, whatever an implementation recomputes."""
    g = conv_macs(generator, size, size)
    d = conv_macs(discriminator, size, size)
    return 2 * (6 * g * 3 + 2 * d * 2 + 4 * d * 3)


def measured_peak_gflops(config, repeats=10):
    """Best GFLOP/s of a 1024^3 matmul and of the generator's residual 3x3 convolution, here and now,
    in the compute dtype of the precision policy in force."""
    dtype = keras.mixed_precision.global_policy().compute_dtype
    a = tf.random.normal((1024, 1024), dtype=dtype)
    channels = 4 * config.ngf
    side = config.image_size // 4
    x = tf.random.normal((1, side, side, channels), dtype=dtype)
    k = tf.random.normal((3, 3, channels, channels), dtype=dtype)
    kernels = {
        "matmul": (tf.function(lambda: tf.matmul(a, a), autograph=False), 2 * 1024 ** 3),
        "conv3x3": (tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME"), autograph=False),
                    2 * side * side * 9 * channels ** 2),
    }
    result = {}
    for name, (function, flops) in kernels.items():
        times = timed(lambda: function().numpy(), repeats, 2)
        result[f"{name}_gflops"] = flops / times.min() / 1e9
    return result


# ---- the fused yardstick ------------------------------------------------------------------------

def fused_step(generator_ab, generator_ba, discriminator_a, discriminator_b, config):
    """The straightforward Keras 3 step: one GradientTape over all four networks, the reference's
    order (generators, then discriminators on the same, detached fakes), one Adam per side."""
    lambda_cycle = config.lambda_cycle
    lambda_identity = lambda_cycle * config.lambda_identity
    generator_vars = generator_ab.trainable_variables + generator_ba.trainable_variables
    discriminator_vars = discriminator_a.trainable_variables + discriminator_b.trainable_variables
    optimizer_g, optimizer_d = networks.adam(config.lr, config.beta1), networks.adam(config.lr, config.beta1)
    optimizer_g.build(generator_vars)
    optimizer_d.build(discriminator_vars)

    def mse(prediction, target):
        return tf.reduce_mean(tf.square(prediction - target))

    def mae(prediction, target):
        return tf.reduce_mean(tf.abs(prediction - target))

    def step(real_a, real_b):
        with tf.GradientTape(persistent=True) as tape:
            fake_b = generator_ab(real_a, training=True)
            fake_a = generator_ba(real_b, training=True)
            generator_loss = (
                mse(discriminator_a(fake_a), 1.0) + mse(discriminator_b(fake_b), 1.0)
                + lambda_cycle * (mae(generator_ba(fake_b), real_a) + mae(generator_ab(fake_a), real_b))
                + lambda_identity * (mae(generator_ba(real_a), real_a) + mae(generator_ab(real_b), real_b)))
            discriminator_loss = 0.5 * (
                mse(discriminator_a(real_a), 1.0) + mse(discriminator_a(tf.stop_gradient(fake_a)), 0.0)
                + mse(discriminator_b(real_b), 1.0) + mse(discriminator_b(tf.stop_gradient(fake_b)), 0.0))
        optimizer_g.apply_gradients(zip(tape.gradient(generator_loss, generator_vars), generator_vars))
        optimizer_d.apply_gradients(
            zip(tape.gradient(discriminator_loss, discriminator_vars), discriminator_vars))
        return generator_loss, discriminator_loss

    return tf.function(step, jit_compile=config.jit)


# ---- the measurements ---------------------------------------------------------------------------

def random_images(rng, batch, size):
    return rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def loop_iteration(config, rng):
    """The CycleGAN and one call of cyclegan.CycleGAN.train_step, as train.train calls it (the precision
    policy it sets stays for the other measurements)."""
    gan = cyclegan.build_gan(config, tf.distribute.get_strategy())
    pools = [cyclegan.HistoryPool(config.pool_size, rng) for _ in "AB"]
    real_a, real_b = (random_images(rng, config.batch_size, config.image_size) for _ in "AB")
    return gan, lambda: gan.train_step(real_a, real_b, *pools)


def fused_iteration(config, rng):
    """One call of the fused yardstick step, over networks of its own."""
    nets = [cyclegan.build_generator(config, f"fused_g{i}") for i in range(2)]
    nets += [networks.build_discriminator(config.ndf, config.netd, config.sigmoid, config.init_gain, f"fused_d{i}") for i in range(2)]
    step = fused_step(*nets, config)
    real_a, real_b = (tf.constant(random_images(rng, 1, config.image_size)) for _ in "AB")
    return lambda: [loss.numpy() for loss in step(real_a, real_b)]


def bench_inference(generator, size, rng, batches=(1, 8), repeats=3):
    """Generator images/s at each batch size, compiled as generate.py runs it (training=False)."""
    translate = tf.function(lambda x: generator(x, training=False), autograph=False)
    result = {}
    for batch in batches:
        images = tf.constant(random_images(rng, batch, size))
        times = timed(lambda: translate(images).numpy(), repeats, 1)
        result[f"batch{batch}_images_per_s"] = batch / float(np.median(times))
    return result


def bench_torch_inference(python, config, batches=(1, 8), repeats=3):
    """PyTorch's images/s for the reference's generator at each batch size (bench_torch_layers.py), to
    set beside bench_inference's."""
    rows = [{"kind": "generator", "name": f"generator, batch {batch}", "shape": [config.image_size] * 2 + [3],
             "ngf": config.ngf, "n_res_blocks": config.n_res_blocks, "batch": batch, "forward_only": True}
            for batch in batches]
    timings = bench_torch_layers(python, rows, repeats, 1)["rows"]
    return {f"batch{batch}_images_per_s": 1000 * batch / row["fwd_ms"] for batch, row in zip(batches, timings)}


def write_jpegs(root, count, size, rng):
    """A dataset of `count` smooth random JPEGs per domain, size x size like horse2zebra's."""
    for domain in "AB":
        folder = os.path.join(root, f"train{domain}")
        os.makedirs(folder)
        for index in range(count):
            coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
            noise = rng.normal(0, 8, (size, size, 3)).astype(np.float32)
            image = tf.image.resize(coarse, [size, size], "bicubic")[0] + noise
            encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
            tf.io.write_file(os.path.join(folder, f"{index:04d}.jpg"), encoded)
    return root


def bench_pipeline(dataroot, config, images):
    """Images/s (both domains counted) out of data.train_dataset, after its first batch."""
    dataset, _ = data.train_dataset(data.train_images(dataroot), config.image_size, config.batch_size, seed=0)
    batches = iter(dataset)
    next(batches)
    count = max(1, images // config.batch_size)
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    return 2 * count * config.batch_size / (time.perf_counter() - started)


def torch_env():
    """PyTorch's threads: TORCH_THREADS if set, else one per CPU, as TensorFlow takes them."""
    return dict(os.environ, TORCH_THREADS=os.environ.get("TORCH_THREADS", str(os.cpu_count())))


def bench_torch(python, script, config_name, steps, warmup):
    """The PyTorch reference step in its own process; its RESULT line as a dict."""
    env = torch_env()
    command = [python, os.path.basename(script), config_name, "eager", str(warmup), str(steps)]
    # Started by a shell that forks it: a process exec'd straight from this one would report this
    # process's resident memory at the fork as its own peak (Linux keeps ru_maxrss across exec).
    command = ["/bin/sh", "-c", '"$0" "$@"; exit $?'] + command
    try:
        done = subprocess.run(command, cwd=os.path.dirname(script), env=env, capture_output=True, text=True)
    except OSError as error:
        raise UsageError(f"--torch {python}: cannot run ({error})") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise UsageError(f"--torch {python}: the yardstick failed: {done.stderr.strip()[-300:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    return {"times": result["times"], "peak_rss_mb": result["peak_rss_MB"], "version": result["torch"]}

# ---- per layer kind (--layers) ------------------------------------------------------------------

GENERATOR_PASSES = 6  # an iteration translates, cycles and identity-maps both ways, all with gradients
DISCRIMINATOR_PASSES = 6  # two adversarial terms in the generators' step, real + fake twice in theirs


def layer_rows(config):
    """The step's layer kinds at the shapes they see (channels-last, batch 1), each with `count`, how many
    times one iteration runs it forward and backward. Rows marked summed=False are already inside
    others (a whole residual block) and stay out of the iteration's total."""
    size, ngf, blocks, passes = config.image_size, config.ngf, config.n_res_blocks, GENERATOR_PASSES
    half, quarter = size // 2, size // 4
    rows = [
        dict(name="call overhead (identity)", kind="identity", shape=[size, size, 3], count=1, summed=False),
        dict(name="c7s1 conv 7x7 reflect", kind="conv", shape=[size, size, 3], filters=ngf, kernel=7, stride=1,
             pad=3, pad_mode="reflect", count=passes),
        dict(name="down1 conv 3x3 s2", kind="conv", shape=[size, size, ngf], filters=2 * ngf, kernel=3, stride=2,
             pad=1, pad_mode="zeros", count=passes),
        dict(name="down2 conv 3x3 s2", kind="conv", shape=[half, half, 2 * ngf], filters=4 * ngf, kernel=3,
             stride=2, pad=1, pad_mode="zeros", count=passes),
        dict(name="res conv 3x3 reflect", kind="conv", shape=[quarter, quarter, 4 * ngf], filters=4 * ngf,
             kernel=3, stride=1, pad=1, pad_mode="reflect", count=2 * blocks * passes),
        dict(name="up1 transposed conv 3x3 s2", kind="upconv", shape=[quarter, quarter, 4 * ngf], filters=2 * ngf,
             count=passes),
        dict(name="up2 transposed conv 3x3 s2", kind="upconv", shape=[half, half, 2 * ngf], filters=ngf,
             count=passes),
        dict(name="out conv 7x7 reflect + tanh", kind="conv", shape=[size, size, ngf], filters=3, kernel=7,
             stride=1, pad=3, pad_mode="reflect", tanh=True, count=passes),
        dict(name="instance norm + ReLU", kind="norm", shape=[size, size, ngf], relu=True, count=2 * passes),
        dict(name="instance norm + ReLU", kind="norm", shape=[half, half, 2 * ngf], relu=True, count=2 * passes),
        dict(name="instance norm + ReLU", kind="norm", shape=[quarter, quarter, 4 * ngf], relu=True,
             count=(1 + blocks) * passes),
        dict(name="instance norm (res out)", kind="norm", shape=[quarter, quarter, 4 * ngf], relu=False,
             count=blocks * passes),
        dict(name="residual block (whole)", kind="resblock", shape=[quarter, quarter, 4 * ngf],
             count=blocks * passes, summed=False),
    ]
    side, channels = size, 3
    strides = networks.DISCRIMINATOR_STRIDES[config.netd]
    for index, stride in enumerate(strides):
        filters = config.ndf * 2 ** index
        rows.append(dict(name=f"D conv{index + 1} 4x4 s{stride}" + (" + IN" if index else "") + " + lrelu",
                         kind="disc", shape=[side, side, channels], filters=filters, stride=stride,
                         norm=index > 0, lrelu=True, count=DISCRIMINATOR_PASSES))
        side, channels = (side + 2 - 4) // stride + 1, filters
    rows.append(dict(name="D score 4x4 s1", kind="disc", shape=[side, side, channels], filters=1, stride=1,
                     norm=False, lrelu=False, count=DISCRIMINATOR_PASSES))
    generator = networks.build_generator(config.ngf, blocks, config.upsample, config.init_gain, "layers_g")
    discriminator = networks.build_discriminator(config.ndf, config.netd, config.sigmoid, config.init_gain,
                                                 "layers_d")
    for name, network in (("G", generator), ("D", discriminator)):
        rows.append(dict(name=f"Adam over one {name}'s variables", kind="adam", shape=None, count=2,
                         param_shapes=[list(v.shape) for v in network.trainable_variables]))
    return [{"summed": True, **row} for row in rows]


def layer_model(row, config):
    """The Keras layers of one row, built as networks.py builds them, as a model over the row's shape."""
    init = networks.conv_initializer(config.init_gain)
    inputs = keras.Input(shape=row["shape"], batch_size=1)
    kind, x = row["kind"], inputs
    if kind == "identity":
        x = layers.Identity()(x)
    elif kind == "conv" and row["pad_mode"] == "reflect":
        x = networks.ReflectionPadding2D(row["pad"])(x)
        x = layers.Conv2D(row["filters"], row["kernel"], strides=row["stride"], padding="valid",
                          kernel_initializer=init)(x)
    elif kind == "conv":
        x = networks.PaddedConv2D(row["filters"], row["kernel"], pad=row["pad"], strides=row["stride"],
                                  kernel_initializer=init)(x)
    elif kind == "upconv":
        x = networks.UpConv2D(row["filters"], 3, kernel_initializer=init)(x)
    elif kind == "norm":
        x = networks.instance_norm()(x)
    elif kind == "resblock":
        x = networks._residual_block(x, row["shape"][-1], init, name="res")
    elif kind == "disc":
        x = layers.ZeroPadding2D(1)(x)
        x = layers.Conv2D(row["filters"], 4, strides=row["stride"], padding="valid", kernel_initializer=init)(x)
        x = networks.instance_norm()(x) if row["norm"] else x
    if row.get("tanh"):
        x = layers.Activation("tanh")(x)
    if row.get("relu"):
        x = layers.ReLU()(x)
    if row.get("lrelu"):
        x = layers.LeakyReLU(0.2)(x)
    return keras.Model(inputs, x)


def time_tf_layer(row, config, steps, warmup, rng):
    """Median ms of the row's layers forward, and forward + backward to the input and the weights with a
    random upstream gradient, each a tf.function. The second also returns the output: a linear layer's
    gradients do not need it, and TensorFlow would otherwise prune its forward pass away."""
    model = layer_model(row, config)
    x = tf.constant(rng.standard_normal([1] + row["shape"]).astype(np.float32))
    upstream = tf.constant(rng.standard_normal(model.output.shape).astype(np.float32))
    weights = model.trainable_variables

    @tf.function
    def forward(x):
        return model(x, training=True)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
        return y, tape.gradient(y, [x] + weights, output_gradients=upstream)

    return {"fwd_ms": 1000 * float(np.median(timed(lambda: forward(x), steps, warmup))),
            "fwdbwd_ms": 1000 * float(np.median(timed(lambda: forward_backward(x), steps, warmup))),
            "out_shape": list(model.output.shape[1:])}


def time_tf_adam(row, config, steps, warmup, rng):
    """Median ms of networks.adam's update (FusedAdam) over variables of the network's shapes."""
    variables = [tf.Variable(rng.normal(0, 0.02, shape).astype(np.float32)) for shape in row["param_shapes"]]
    gradients = [tf.constant(rng.normal(0, 1e-3, shape).astype(np.float32)) for shape in row["param_shapes"]]
    optimizer = networks.adam(config.lr, config.beta1)
    optimizer.build(variables)
    update = tf.function(lambda: optimizer.apply_gradients(zip(gradients, variables)))
    return {"fwd_ms": None, "fwdbwd_ms": 1000 * float(np.median(timed(update, steps, warmup)))}


def bench_torch_layers(python, rows, steps, warmup):
    """The rows timed by bench_torch_layers.py under `python`; its JSON as a dict."""
    spec = json.dumps({"steps": steps, "warmup": warmup, "rows": rows})
    try:
        done = subprocess.run([python, TORCH_LAYERS_SCRIPT], input=spec, env=torch_env(), capture_output=True,
                              text=True)
    except OSError as error:
        raise UsageError(f"--torch {python}: cannot run ({error})") from None
    if done.returncode or not done.stdout.strip():
        raise UsageError(f"--torch {python}: bench_torch_layers.py failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_layers(args, config):
    rng = np.random.default_rng(0)
    rows = layer_rows(config)
    untimed = args.warmup + 1  # the first call traces a tf.function, and allocates in both frameworks
    for row in rows:
        timer = time_tf_adam if row["kind"] == "adam" else time_tf_layer
        row["tf"] = timer(row, config, args.steps, untimed, rng)
    report = {"config": args.config, "mode": "layers", "image_size": config.image_size, "ngf": config.ngf,
              "ndf": config.ndf, "n_res_blocks": config.n_res_blocks, "netd": config.netd, "steps": args.steps,
              "warmup": args.warmup, "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    frameworks = ["tf"]
    if args.torch:
        spec = [{key: value for key, value in row.items() if key != "tf"} for row in rows]
        torch = bench_torch_layers(args.torch, spec, args.steps, untimed)
        report["torch"] = {"version": torch["torch"], "threads": torch["threads"]}
        for row, result in zip(rows, torch["rows"]):
            row["torch"] = result
        frameworks.append("torch")
    for row in rows:
        row.pop("param_shapes", None)
        for framework in frameworks:
            row[framework]["per_iteration_ms"] = row["count"] * row[framework]["fwdbwd_ms"]
        if args.torch:
            row["tf_over_torch"] = row["tf"]["fwdbwd_ms"] / row["torch"]["fwdbwd_ms"]
    report["rows"] = rows
    report["total_ms"] = {framework: sum(row[framework]["per_iteration_ms"] for row in rows if row["summed"])
                          for framework in frameworks}
    overhead = rows[0]
    report["net_total_ms"] = {  # what the layers cost inside one step, without a call's fixed cost each
        framework: report["total_ms"][framework] - overhead[framework]["fwdbwd_ms"] * sum(
            row["count"] for row in rows if row["summed"]) for framework in frameworks}
    if args.torch:
        report["total_tf_over_torch"] = report["total_ms"]["tf"] / report["total_ms"]["torch"]
        report["net_total_tf_over_torch"] = report["net_total_ms"]["tf"] / report["net_total_ms"]["torch"]
    return report


def print_layers_report(report):
    torch = "torch" in report
    print(f"config {report['config']}: {report['image_size']}x{report['image_size']}, ngf {report['ngf']}, "
          f"{report['n_res_blocks']} blocks, ndf {report['ndf']} {report['netd']}, batch 1, float32, median of "
          f"{report['steps']} after {report['warmup']} + 1 untimed, TensorFlow {report['tensorflow']}"
          + (f", PyTorch {report['torch']['version']} ({report['torch']['threads']} threads)" if torch else "")
          + f", {report['cpu_count']} CPUs")
    print("  ms; per iter = count x fwd+bwd; ( ) = not in the total: a whole block's layers are rows of "
          "their own; the\n  identity's is each call's fixed cost, taken off every call in the net total")
    header = f"  {'layer':<30} {'input':>12} {'out C':>5} {'count':>5} {'TF fwd':>8} {'TF f+b':>8}"
    if torch:
        header += f" {'pt fwd':>8} {'pt f+b':>8} {'TF/pt':>6}"
    header += f" {'TF/iter':>9}" + (f" {'pt/iter':>9} {'TF-pt':>8}" if torch else "")
    print(header)

    def ms(value):
        return f"{'-':>8}" if value is None else f"{value:8.2f}"

    for row in report["rows"]:
        shape = "x".join(map(str, row["shape"])) if row["shape"] else "-"
        out = str(row["tf"]["out_shape"][-1]) if "out_shape" in row["tf"] else "-"
        line = f"  {row['name']:<30} {shape:>12} {out:>5} {row['count']:>5} {ms(row['tf']['fwd_ms'])} " \
               f"{ms(row['tf']['fwdbwd_ms'])}"
        if torch:
            line += f" {ms(row['torch']['fwd_ms'])} {ms(row['torch']['fwdbwd_ms'])} {row['tf_over_torch']:6.2f}"
        per_iteration = [row["tf"]["per_iteration_ms"]] + ([row["torch"]["per_iteration_ms"]] if torch else [])
        if torch:
            per_iteration.append(per_iteration[0] - per_iteration[1])
        wrap = "{:9.1f}" if row["summed"] else "({:7.1f})"
        line += "".join(" " + wrap.format(value) for value in per_iteration)
        print(line)
    for label, key in (("total per iteration", "total"), ("total less call overheads", "net_total")):
        total = report[f"{key}_ms"]
        line = f"  {label:<30} {'':>12} {'':>5} {'':>5} {'':>8} {'':>8}"
        if torch:
            line += f" {'':>8} {'':>8} {report[f'{key}_tf_over_torch']:6.2f}"
            line += f" {total['tf']:9.1f} {total['torch']:9.1f} {total['tf'] - total['torch']:8.1f}"
        else:
            line += f" {total['tf']:9.1f}"
        print(line)
    print("BENCH " + json.dumps(report, sort_keys=True))


def run(args, config):
    rng = np.random.default_rng(0)
    size = config.image_size
    report = {"config": args.config, "image_size": size, "ngf": config.ngf, "ndf": config.ndf,
              "n_res_blocks": config.n_res_blocks, "batch_size": config.batch_size, "steps": args.steps,
              "warmup": args.warmup, "rounds": args.rounds, "jit": config.jit, "tensorflow": tf.__version__,
              "policy": distribute.precision_policy(config.mixed_precision),
              "cpu_count": os.cpu_count(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    times = {"torch": [], "loop": [], "fused": [], "loop_deterministic": []}
    ratios = {"loop_over_fused": [], "loop_over_torch": [], "fused_over_torch": [], "deterministic_over_loop": []}
    gan, loop = loop_iteration(config, rng)
    timed(loop, 0, args.warmup)
    for round_ in range(args.rounds):
        if args.torch:
            torch = bench_torch(args.torch, args.torch_script, args.config, args.steps, args.warmup)
            times["torch"].append(np.array(torch["times"]))
        times["loop"].append(timed(loop, args.steps, 0))
        if round_ == 0:
            loop_peak_rss = peak_rss_mb()
            fused = fused_iteration(config, rng)
            timed(fused, 0, args.warmup)
            if args.deterministic:
                distribute.make_deterministic(0)  # as train.py --seed does: seeds, then op determinism
                _, deterministic_loop = loop_iteration(config, rng)
                timed(deterministic_loop, 0, args.warmup)
        if args.deterministic:
            set_op_determinism(True)
            times["loop_deterministic"].append(timed(deterministic_loop, args.steps, 0))
            set_op_determinism(False)
        times["fused"].append(timed(fused, args.steps, 0))
        medians = {name: np.median(values[-1]) for name, values in times.items() if values}
        ratios["loop_over_fused"].append(medians["loop"] / medians["fused"])
        if args.deterministic:
            ratios["deterministic_over_loop"].append(medians["loop_deterministic"] / medians["loop"])
        if args.torch:
            ratios["loop_over_torch"].append(medians["loop"] / medians["torch"])
            ratios["fused_over_torch"].append(medians["fused"] / medians["torch"])
    for name, values in times.items():
        if values:
            report[name] = summary(np.concatenate(values))
    report["loop"]["peak_rss_mb"] = loop_peak_rss
    if args.torch:
        report["torch"].update(peak_rss_mb=torch["peak_rss_mb"], version=torch["version"])
    for name, values in ratios.items():
        if values:
            report[name] = float(np.median(values))
            report.setdefault("round_ratios", {})[name] = [float(v) for v in values]
    flops = iteration_flops(gan.generator_ab, gan.discriminator_a, size)
    report["flops"] = {"iteration_gflop": flops / 1e9, **measured_peak_gflops(config),
                       "loop_gflops": flops / report["loop"]["median_s"] / 1e9,
                       "fused_gflops": flops / report["fused"]["median_s"] / 1e9}
    report["flops"]["loop_fraction_of_peak"] = report["flops"]["loop_gflops"] / max(
        report["flops"]["matmul_gflops"], report["flops"]["conv3x3_gflops"])
    report["inference"] = bench_inference(gan.generator_ab, size, rng)
    if args.torch:
        report["torch"]["inference"] = bench_torch_inference(args.torch, config)
    with tempfile.TemporaryDirectory() as scratch:
        dataroot = args.dataroot or write_jpegs(scratch, min(args.pipeline_images, 64), 256, rng)
        pipeline = bench_pipeline(dataroot, config, args.pipeline_images)
    consumed = 2 * config.batch_size / report["loop"]["median_s"]
    report["pipeline"] = {"images_per_s": pipeline, "training_consumes_images_per_s": consumed,
                          "headroom": pipeline / consumed}
    report["peak_rss_mb"] = peak_rss_mb()
    return report


def print_report(report):
    def line(label, result):
        print(f"  {label:<34} {result['median_s']:8.3f} s/iter  (min {result['min_s']:.3f}, "
              f"max {result['max_s']:.3f})")

    print(f"config {report['config']}: {report['image_size']}x{report['image_size']}, ngf {report['ngf']}, "
          f"{report['n_res_blocks']} blocks, ndf {report['ndf']}, batch {report['batch_size']}, "
          f"jit {report['jit']}, {report['policy']}, {report['rounds']} x {report['steps']} steps after "
          f"{report['warmup']} warm-up, "
          f"TensorFlow {report['tensorflow']}, {report['cpu_count']} CPUs")
    if "torch" in report:
        line(f"PyTorch {report['torch']['version']} reference step", report["torch"])
    line("project loop (CycleGAN.train_step)", report["loop"])
    if "loop_deterministic" in report:
        line("project loop, op determinism on", report["loop_deterministic"])
    line("fused GradientTape step", report["fused"])
    names = ["loop_over_fused"] + (["loop_over_torch", "fused_over_torch"] if "torch" in report else [])
    names += ["deterministic_over_loop"] if "loop_deterministic" in report else []
    for name in names:
        label = name.replace("_over_", " / ").replace("torch", "PyTorch")
        rounds = "" if report["rounds"] == 1 else " (rounds: " + " ".join(
            f"{value:.2f}" for value in report["round_ratios"][name]) + ")"
        print(f"  {label} {report[name]:.2f}{rounds}", end="")
    flops = report["flops"]
    print(f"\n  {flops['iteration_gflop']:.1f} GFLOP per iteration: loop {flops['loop_gflops']:.1f} GFLOP/s, "
          f"fused {flops['fused_gflops']:.1f} GFLOP/s; measured peak matmul {flops['matmul_gflops']:.1f}, "
          f"conv3x3 {flops['conv3x3_gflops']:.1f} GFLOP/s (loop at {100 * flops['loop_fraction_of_peak']:.0f}%)")
    inference = report["inference"]
    print(f"  generator inference: {inference['batch1_images_per_s']:.2f} images/s at batch 1, "
          f"{inference['batch8_images_per_s']:.2f} at batch 8", end="")
    if "torch" in report:
        theirs = report["torch"]["inference"]
        print(f"; PyTorch {theirs['batch1_images_per_s']:.2f} and {theirs['batch8_images_per_s']:.2f}", end="")
    print()
    pipeline = report["pipeline"]
    print(f"  input pipeline: {pipeline['images_per_s']:.0f} images/s; training consumes "
          f"{pipeline['training_consumes_images_per_s']:.2f} images/s ({pipeline['headroom']:.0f}x headroom)")
    rss = f"  peak RSS: {report['loop']['peak_rss_mb']:.0f} MB after the loop, {report['peak_rss_mb']:.0f} MB at the end"
    if "torch" in report:
        rss += f"; PyTorch {report['torch']['peak_rss_mb']:.0f} MB"
    print(rss)
    print("BENCH " + json.dumps(report, sort_keys=True))


def main(argv=None):
    args, config = parse_config(argv)
    if args.layers:
        print_layers_report(run_layers(args, config))
    else:
        print_report(run(args, config))


if __name__ == "__main__":
    cli.run_cli(main, "bench.py")
