"""Benchmark one CycleGAN training iteration: the project's loop beside a fused step and PyTorch.

    python bench.py --config S --steps 10
    python bench.py --config P --steps 3 --warmup 1 --rounds 3 --torch /tmp/torchvenv/bin/python
    python bench.py --layers --config S --torch /tmp/torchvenv/bin/python

Prints, from one run: seconds per iteration of cyclegan.CycleGAN.train_step (the code train.py runs) and
of a plain fused GradientTape step over the same networks (the yardstick), their analytic FLOPs against
this machine's matmul/conv peak, generator inference images/s (these two in a process of its own, in
TensorFlow's default threads as generate.py runs: the steps run in train.py's thread layout,
distribute.set_training_threads), input-pipeline images/s on a folder of JPEGs (data.train_dataset)
and peak resident memory (and GPU memory on a GPU).
With --torch, the PyTorch reference step (../shared/bench/torch_reference_step.py, run by that
interpreter) is timed back to back, on the GPU where TensorFlow has one. The last line, `BENCH {...}`,
is the same report as JSON.

--layers times instead each kind of layer of the step's networks alone, forward and forward+backward at
the shape it sees (batch 1), beside the same torch.nn layers (bench_torch_layers.py), weighted by how
often one iteration runs it: where the step's time goes, and where it goes against PyTorch's
(bench_layers.py).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import cli
import cyclegan
import data
import distribute
import networks
from bench_layers import bench_torch_layers, device_name, on_gpu, print_layers_report, run_layers, timed, torch_env
from config import BENCH
from cli import UsageError
from distribute import tf
import keras  # noqa: E402  (after distribute: TensorFlow imported quietly)

STEPS = 10
ROUNDS = 1
WARMUP = 2
PIPELINE_IMAGES = 64
HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, "..", "shared", "bench", "torch_reference_step.py")
# Runs the yardstick script (argv[1]) with every tensor and parameter it makes on the GPU, then prints
# PyTorch's peak GPU memory: the reference step has no device option of its own.
TORCH_ON_GPU = ("import json, runpy, sys, torch; torch.set_default_device('cuda'); script = sys.argv.pop(1); "
                "sys.argv[0] = script; runpy.run_path(script, run_name='__main__'); "
                "print('GPU ' + json.dumps({'peak_mb': torch.cuda.max_memory_allocated() / 2 ** 20}))")


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
    p.add_argument("--generator-only", action="store_true",
                   help="time only generate.py's generator images/s and the machine's matmul and conv peaks, in "
                        "TensorFlow's default threads, and print them as JSON: bench.py runs this in a process "
                        "of its own, since its loop runs in train.py's thread layout")
    return p


def parse_config(argv=None):
    args = build_parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("image_size", "ngf", "ndf", "n_res_blocks") if getattr(args, k) is not None}
    if args.layers:
        mixed = [f"--{name.replace('_', '-')}" for name in ("jit", "mixed_precision", "deterministic", "dataroot",
                                                             "generator_only")
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


def peak_gpu_mb():
    """TensorFlow's peak memory on its first GPU so far (None on a CPU)."""
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20 if on_gpu() else None


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


def bench_torch(python, script, config_name, steps, warmup):
    """The PyTorch reference step in its own process, on the GPU where TensorFlow has one; its RESULT
    line as a dict."""
    env = torch_env()
    command = [python] + (["-c", TORCH_ON_GPU] if on_gpu() else []) + [
        os.path.basename(script), config_name, "eager", str(warmup), str(steps)]
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
    report = {"times": result["times"], "peak_rss_mb": result["peak_rss_MB"], "version": result["torch"]}
    gpu = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
    if gpu:
        report["peak_gpu_mb"] = json.loads(gpu[-1][len("GPU "):])["peak_mb"]
    return report


def generator_report(config):
    """What generate.py and the machine do in TensorFlow's default threads: generator images/s
    (bench_inference) and the matmul and conv peaks (measured_peak_gflops)."""
    keras.mixed_precision.set_global_policy(distribute.precision_policy(config.mixed_precision))
    generator = cyclegan.build_generator(config, "generator_ab")
    return {"peaks": measured_peak_gflops(config),
            "inference": bench_inference(generator, config.image_size, np.random.default_rng(0))}


def generator_report_in_own_process(argv):
    """generator_report from `bench.py ARGV --generator-only`: this process runs its ops in train.py's
    thread layout (distribute.set_training_threads), which is not generate.py's."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--generator-only"],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GENERATOR ")]
    if done.returncode or not lines:
        raise UsageError(f"bench.py --generator-only failed: {done.stderr.strip()[-300:]}")
    return json.loads(lines[-1][len("GENERATOR "):])


def run(args, config, argv, threads):
    rng = np.random.default_rng(0)
    size = config.image_size
    report = {"config": args.config, "image_size": size, "ngf": config.ngf, "ndf": config.ndf,
              "n_res_blocks": config.n_res_blocks, "batch_size": config.batch_size, "steps": args.steps,
              "warmup": args.warmup, "rounds": args.rounds, "jit": config.jit, "tensorflow": tf.__version__,
              "policy": distribute.precision_policy(config.mixed_precision),
              "cpu_count": os.cpu_count(), "device": device_name(),
              "threads": "TensorFlow's default" if threads is None else f"{threads[0]} per op, {threads[1]} op(s) at a time",
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
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
            loop_peak_rss, loop_peak_gpu = peak_rss_mb(), peak_gpu_mb()
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
    if loop_peak_gpu is not None:
        report["loop"]["peak_gpu_mb"] = loop_peak_gpu
    if args.torch:
        report["torch"].update({key: torch[key] for key in ("peak_rss_mb", "peak_gpu_mb", "version") if key in torch})
    for name, values in ratios.items():
        if values:
            report[name] = float(np.median(values))
            report.setdefault("round_ratios", {})[name] = [float(v) for v in values]
    flops = iteration_flops(gan.generator_ab, gan.discriminator_a, size)
    generator = generator_report_in_own_process(argv)
    report["flops"] = {"iteration_gflop": flops / 1e9, **generator["peaks"],
                       "loop_gflops": flops / report["loop"]["median_s"] / 1e9,
                       "fused_gflops": flops / report["fused"]["median_s"] / 1e9}
    report["flops"]["loop_fraction_of_peak"] = report["flops"]["loop_gflops"] / max(
        report["flops"]["matmul_gflops"], report["flops"]["conv3x3_gflops"])
    report["inference"] = generator["inference"]
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
          f"TensorFlow {report['tensorflow']}, on {report['device']}, threads: {report['threads']}")
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
    if "peak_gpu_mb" in report["loop"]:
        theirs = report.get("torch", {}).get("peak_gpu_mb")
        print(f"  peak GPU memory: {report['loop']['peak_gpu_mb']:.0f} MB after the loop"
              + (f"; PyTorch {theirs:.0f} MB" if theirs is not None else ""))
    print("BENCH " + json.dumps(report, sort_keys=True))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, config = parse_config(argv)
    if args.layers:
        print_layers_report(run_layers(config, args.config, args.steps, args.warmup, args.torch))
    elif args.generator_only:
        print("GENERATOR " + json.dumps(generator_report(config)))
    else:
        threads = distribute.set_training_threads(distribute.first_activation_elements(config))  # as train.py
        print_report(run(args, config, argv, threads))


if __name__ == "__main__":
    cli.run_cli(main, "bench.py")
