"""Timing pieces of bench.py, and its --layers mode: each kind of layer of the step's networks alone.

layer_rows lists the step's layer kinds at the shapes they see (batch 1) with how often one iteration
runs each; run_layers times them forward and forward+backward, and with a torch interpreter the same
torch.nn layers beside them (benchmark/torch_layers.py, in a process of its own). PyTorch computes on the
device TensorFlow does: the GPU when TensorFlow sees one (torch_env).
"""
import functools
import json
import os
import subprocess

import numpy as np

from cli import UsageError
import networks
from benchmark.measure import timed
from quiet import keras, tensorflow
from keras import layers

tf = tensorflow()

TORCH_LAYERS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_layers.py")


def on_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


def device_name():
    """What TensorFlow computes on: its first GPU's name, else the CPU count."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"{os.cpu_count()} CPUs"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def torch_env():
    """PyTorch's threads (TORCH_THREADS if set, else one per CPU, as TensorFlow takes them) and device
    (TORCH_DEVICE: cuda where TensorFlow has a GPU, so that the two compute on the same chip)."""
    return dict(os.environ, TORCH_THREADS=os.environ.get("TORCH_THREADS", str(os.cpu_count())),
                TORCH_DEVICE="cuda" if on_gpu() else "cpu")


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
    init = functools.partial(networks.conv_initializer, config.init_gain)  # a fresh one per layer
    inputs = keras.Input(shape=row["shape"], batch_size=1)
    kind, x = row["kind"], inputs
    if kind == "identity":
        x = layers.Identity()(x)
    elif kind == "conv":
        x = networks.PaddedConv2D(row["filters"], row["kernel"], pad=row["pad"], reflect=row["pad_mode"] == "reflect",
                                  strides=row["stride"], kernel_initializer=init())(x)
    elif kind == "upconv":
        x = networks.UpConv2D(row["filters"], 3, kernel_initializer=init())(x)
    elif kind == "norm":
        x = networks.InstanceNormalization()(x)
    elif kind == "resblock":
        x = networks._residual_block(x, row["shape"][-1], init, name="res")
    elif kind == "disc":
        x = layers.ZeroPadding2D(1)(x)
        x = layers.Conv2D(row["filters"], 4, strides=row["stride"], padding="valid", kernel_initializer=init())(x)
        x = networks.InstanceNormalization()(x) if row["norm"] else x
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
    """Median ms of networks.adam's update (ResourceApplyAdam where cpu_kernels' fused_adam is in use) over
    variables of the network's shapes."""
    variables = [tf.Variable(rng.normal(0, 0.02, shape).astype(np.float32)) for shape in row["param_shapes"]]
    gradients = [tf.constant(rng.normal(0, 1e-3, shape).astype(np.float32)) for shape in row["param_shapes"]]
    optimizer = networks.adam(config.lr, config.beta1)
    optimizer.build(variables)
    update = tf.function(lambda: optimizer.apply_gradients(zip(gradients, variables)))
    return {"fwd_ms": None, "fwdbwd_ms": 1000 * float(np.median(timed(update, steps, warmup)))}


def bench_torch_layers(python, rows, steps, warmup):
    """The rows timed by benchmark/torch_layers.py under `python`; its JSON as a dict."""
    spec = json.dumps({"steps": steps, "warmup": warmup, "rows": rows})
    try:
        done = subprocess.run([python, TORCH_LAYERS_SCRIPT], input=spec, env=torch_env(), capture_output=True,
                              text=True)
    except OSError as error:
        raise UsageError(f"--torch {python}: cannot run ({error})") from None
    if done.returncode or not done.stdout.strip():
        raise UsageError(f"--torch {python}: benchmark/torch_layers.py failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_layers(config, config_name, steps, warmup, torch_python=None):
    """The report of --layers: every row of layer_rows(config) timed (median of `steps` after `warmup`
    + 1 untimed calls), with `torch_python`'s PyTorch beside it."""
    rng = np.random.default_rng(0)
    rows = layer_rows(config)
    untimed = warmup + 1  # the first call traces a tf.function, and allocates in both frameworks
    for row in rows:
        timer = time_tf_adam if row["kind"] == "adam" else time_tf_layer
        row["tf"] = timer(row, config, steps, untimed, rng)
    report = {"config": config_name, "mode": "layers", "image_size": config.image_size, "ngf": config.ngf,
              "ndf": config.ndf, "n_res_blocks": config.n_res_blocks, "netd": config.netd, "steps": steps,
              "warmup": warmup, "tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
              "device": device_name(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    frameworks = ["tf"]
    if torch_python:
        spec = [{key: value for key, value in row.items() if key != "tf"} for row in rows]
        torch = bench_torch_layers(torch_python, spec, steps, untimed)
        report["torch"] = {"version": torch["torch"], "threads": torch["threads"]}
        for row, result in zip(rows, torch["rows"]):
            row["torch"] = result
        frameworks.append("torch")
    for row in rows:
        row.pop("param_shapes", None)
        for framework in frameworks:
            row[framework]["per_iteration_ms"] = row["count"] * row[framework]["fwdbwd_ms"]
        if torch_python:
            row["tf_over_torch"] = row["tf"]["fwdbwd_ms"] / row["torch"]["fwdbwd_ms"]
    report["rows"] = rows
    report["total_ms"] = {framework: sum(row[framework]["per_iteration_ms"] for row in rows if row["summed"])
                          for framework in frameworks}
    overhead = rows[0]
    report["net_total_ms"] = {  # what the layers cost inside one step, without a call's fixed cost each
        framework: report["total_ms"][framework] - overhead[framework]["fwdbwd_ms"] * sum(
            row["count"] for row in rows if row["summed"]) for framework in frameworks}
    if torch_python:
        report["total_tf_over_torch"] = report["total_ms"]["tf"] / report["total_ms"]["torch"]
        report["net_total_tf_over_torch"] = report["net_total_ms"]["tf"] / report["net_total_ms"]["torch"]
    return report


def print_layers_report(report):
    torch = "torch" in report
    print(f"config {report['config']}: {report['image_size']}x{report['image_size']}, ngf {report['ngf']}, "
          f"{report['n_res_blocks']} blocks, ndf {report['ndf']} {report['netd']}, batch 1, float32, median of "
          f"{report['steps']} after {report['warmup']} + 1 untimed, TensorFlow {report['tensorflow']}"
          + (f", PyTorch {report['torch']['version']} ({report['torch']['threads']} threads)" if torch else "")
          + f", on {report['device']}")
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
