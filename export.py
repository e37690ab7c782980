"""A generator in the formats other runtimes run (a TensorFlow SavedModel, an ONNX model, a LiteRT model),
each written whole or not at all with a README that says what it takes and how to run it; and an export
run in its own runtime, to check it (a quantized model's difference from float32) and to time it.
convert.py is the command."""
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import warnings

import numpy as np

import checkpoints
from checkpoints import write_atomically

FORMATS = {"keras": ".keras", "saved_model": "", "onnx": ".onnx", "litert": ".tflite"}  # format: TARGET's ending
LABELS = {"keras": "Keras model", "saved_model": "TensorFlow SavedModel", "onnx": "ONNX model",
          "litert": "LiteRT (TensorFlow Lite) model"}
ONNX_OPSET = 17  # the ONNX operator set written (onnxruntime has run it since 1.13)
INPUT_NAME, OUTPUT_NAME = "image", "translated"  # the export's input and output, in every format
TEST_SIZE = 256  # side of the test image that --quantize and --time translate
TIME_BATCHES = (1, 8)  # --time's batch sizes: one image at a time, and generate.py's (inference.TRANSLATE_BATCH)
TIME_IMAGES = 4  # images each path translates at each batch size in a round of --time (one batch at least)
TIME_ROUNDS = 3  # rounds of --time, each path in turn: its figures are their medians
log = logging.getLogger("cyclegan")


def readme_path(target, format):
    """The README that goes with an export: inside a SavedModel's folder, else TARGET.README.txt beside it."""
    return os.path.join(target, "README.txt") if format == "saved_model" else target + ".README.txt"


# ---- exporting ----------------------------------------------------------------------------------

@contextlib.contextmanager
def kernels(enabled):
    """networks.py's layers traced meanwhile with cpu_kernels' CPU kernels (`enabled`) or with their plain
    Keras ops, then the kernels as they were. The plain ops are what every runtime converts and runs well:
    LiteRT's converter cannot convert the kernels' folded channels (it cannot tell their count), and
    onnxruntime and a GPU run the Winograd gathers slower than their own convolutions."""
    import cpu_kernels
    import networks

    were_on = bool(networks.KERNELS)
    cpu_kernels.use(enabled)
    try:
        yield
    finally:
        cpu_kernels.use(were_on)


def float32_copy(generator):
    """`generator` with every layer computing in float32: a mixed-precision run saves its generators
    computing in float16 or bfloat16, which the exports' float32 input and output would only hide."""
    import keras

    copy = keras.models.clone_model(
        generator, clone_function=lambda layer: type(layer).from_config({**layer.get_config(), "dtype": "float32"}))
    for new, old in zip(copy.layers, generator.layers):
        new.set_weights([np.asarray(weight, np.float32) for weight in old.get_weights()])
    return copy


def tensorflow():
    from quiet import tensorflow

    return tensorflow()


def input_spec():
    tf = tensorflow()
    return tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_NAME)  # any batch, height and width


def write_saved_model(model, folder):
    """A SavedModel of `model`: signature serving_default, image -> {"translated": ...}. A tf.Module of
    its own, not Keras' ExportArchive, which stores every weight twice (as `variables` and
    `_all_variables`: 88 MB for the paper's 45 MB generator)."""
    tf = tensorflow()
    module = tf.Module()
    module.weights = [weight.value for weight in model.weights]  # the tf.Variables the function reads
    module.serve = tf.function(lambda image: {OUTPUT_NAME: model(image, training=False)},
                               input_signature=[input_spec()])
    tf.saved_model.save(module, folder, signatures={"serving_default": module.serve})


def write_onnx(model, path, readme):
    """An ONNX model of `model` by tf2onnx (Keras' export), its input and output named and its dimensions
    called batch, height and width; `readme` goes in its metadata."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        converted = os.path.join(folder, "model.onnx")
        with warnings.catch_warnings():  # Keras' patch of tf2onnx for numpy 2 trips numpy's FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            model.export(converted, format="onnx", input_signature=[input_spec()], opset_version=ONNX_OPSET,
                         verbose=False)
        proto = onnx.load(converted)
    graph = proto.graph
    old_name = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old_name else name for name in node.output]
    graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        for dimension, name in zip(value.type.tensor_type.shape.dim, ("batch", "height", "width")):
            dimension.dim_param = name
    proto.doc_string = readme
    onnx.helper.set_model_props(proto, {"input": "NHWC float32 RGB in [-1, 1]", "output": "NHWC float32 RGB in [-1, 1]",
                                        "readme": readme})
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def litert_bytes(model, quantize=None):
    """`model` as LiteRT flatbuffer bytes, of LiteRT's built-in ops only (no TensorFlow ops, which phones'
    runtimes lack), with a dynamic input shape; weights in float32, or as `quantize` says."""
    tf = tensorflow()
    with tempfile.TemporaryDirectory() as folder:
        write_saved_model(model, folder)  # the converter's way from Keras 3 (Keras' own litert export's too)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        from quiet import stderr_silenced

        with stderr_silenced():
            return converter.convert()


def describe(found):
    """The network in words: "resnet generator, ngf 64, 9 residual blocks"."""
    text = f"{found['netg']} generator, ngf {found['ngf']}"
    return text + (f", {found['n_res_blocks']} residual blocks" if "n_res_blocks" in found else "")


RUN_SNIPPETS = {
    "saved_model": ('import tensorflow as tf\n'
                    'translate = tf.saved_model.load("{path}").signatures["serving_default"]\n'
                    'translated = translate(image=tf.constant(images))["translated"].numpy()'),
    "onnx": ('import onnxruntime\n'
             'session = onnxruntime.InferenceSession("{path}")\n'
             'translated = session.run(["translated"], {{"image": images}})[0]'),
    "litert": ('from ai_edge_litert.interpreter import Interpreter\n'
               'translate = Interpreter(model_path="{path}").get_signature_runner()  # resizes to each input\n'
               'translated = translate(image=images)["translated"]'),
}


def readme_text(target, format, source, found, size_rule, quantize=None):
    """What an export takes and gives, and how to run it (its README, and an ONNX model's metadata)."""
    multiple, smallest = size_rule
    weights = {"float16": "float16 weights", "int8": "int8 weights, activations quantized on the fly"}
    lines = [f"{os.path.basename(target)}: {LABELS[format]}" + (f" ({weights[quantize]})" if quantize else "")
             + f" of a CycleGAN {describe(found)}, exported by convert.py from {os.path.basename(source)}.",
             "",
             f'Input "{INPUT_NAME}": a batch of RGB images, NHWC (batch, height, width, 3), float32 in [-1, 1] '
             "(8-bit pixel / 127.5 - 1).",
             f"Height and width: any multiples of {multiple}, at least {smallest}; mirror-pad other sizes up to "
             "one and crop the output back.",
             f'Output "{OUTPUT_NAME}": the translated batch, the same shape, float32 in [-1, 1] '
             "((value + 1) * 127.5 is the 8-bit pixel).",
             "",
             "Run it (images: a float32 array of that layout):",
             ""]
    lines += ["    " + line for line in RUN_SNIPPETS[format].format(path=os.path.basename(target)).splitlines()]
    return "\n".join(lines) + "\n"


def write_export(generator, target, format, readme, quantize=None, cpu_tuned=False):
    """Writes `generator` to TARGET and `readme` beside it (inside a SavedModel): each into a temporary
    first, renamed into place once the slow conversion has succeeded. Returns the bytes of a LiteRT
    model's float32 version when quantized (for the difference), else None."""
    for name in ("absl", "tf2onnx"):  # the converters' INFO notes would pass our log's INFO level
        logging.getLogger(name).setLevel(logging.WARNING)
    model = float32_copy(generator)
    with kernels(cpu_tuned):
        if format == "saved_model":
            temporary = f"{target.rstrip(os.sep)}.tmp{os.getpid()}"
            try:
                try:
                    write_saved_model(model, temporary)
                except tensorflow().errors.OpError as error:  # TensorFlow's own, for a full disk too
                    raise OSError(None, error.message.rsplit("; ", 1)[-1], target) from None
                write_file(os.path.join(temporary, "README.txt"), readme)
                replace_folder(temporary, target)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            return None
        float32 = None
        if format == "onnx":
            write = lambda path: write_onnx(model, path, readme)  # noqa: E731
        else:
            content = litert_bytes(model, quantize)
            float32 = litert_bytes(model) if quantize else None
            write = lambda path: write_file(path, content, "wb")  # noqa: E731

        def write_with_readme(temporary):  # the README goes in place once the model is whole, just before it
            write(temporary)
            write_atomically(readme_path(target, format), lambda path: write_file(path, readme))

        write_atomically(target, write_with_readme)
    return float32


def write_file(path, content, mode="w"):
    with open(path, mode) as f:
        f.write(content)


def replace_folder(temporary, target):
    """Renames the folder `temporary` to TARGET, replacing what is there (checked by refuse_target): the old
    one is moved aside first and removed once the new one is in place, and put back if that fails."""
    aside = None
    if os.path.lexists(target):
        aside = f"{target.rstrip(os.sep)}.old{os.getpid()}"
        os.rename(target, aside)
    try:
        os.rename(temporary, target)
    except BaseException:
        if aside:
            os.rename(aside, target)
        raise
    if aside:
        shutil.rmtree(aside) if os.path.isdir(aside) and not os.path.islink(aside) else os.remove(aside)


@contextlib.contextmanager
def target_lock(target):
    """One convert.py per TARGET while the block runs (checkpoints.writer_lock on .NAME.convert.lock beside
    it, removed at the end); where the folder cannot be written, convert.refuse_target says why."""
    folder, name = os.path.split(os.path.abspath(target.rstrip(os.sep)))
    if checkpoints.unwritable(folder):
        yield
        return
    os.makedirs(folder, exist_ok=True)
    with checkpoints.writer_lock(os.path.join(folder, f".{name}.convert.lock"), target, "convert.py",
                                 "give another TARGET", remove=True):
        yield


def cut_short(target, readme):
    """Whether `readme` is what a convert.py killed between its two renames left (write_export puts the
    README in place first): its first line names TARGET, which is not there. A rerun may replace it."""
    if os.path.lexists(target) or not os.path.isfile(readme):
        return False
    with open(readme, errors="replace") as f:
        first = f.readline()
    return first.startswith(f"{os.path.basename(target)}: ") and "exported by convert.py" in first


def remove_stale_temporaries(target, format):
    """Removes what a killed convert.py left beside TARGET: its temporaries (write_atomically's NAME.tmpPID.EXT,
    a SavedModel's NAME.tmpPID folder, and its NAME.oldPID once a whole TARGET is back) whose process runs no
    more. A NAME.oldPID where TARGET is missing is the user's earlier export, set aside: it is put back."""
    folder, name = os.path.split(os.path.abspath(target.rstrip(os.sep)))
    stale = checkpoints.stale_temporaries(folder, {name, os.path.basename(readme_path(target, format))})
    checkpoints.remove_temporaries(stale, "a killed convert.py")
    if format == "saved_model":
        pattern = re.compile(re.escape(name) + r"\.(tmp|old)(\d+)")
        for entry in os.scandir(folder) if os.path.isdir(folder) else []:
            match = pattern.fullmatch(entry.name)
            if not (match and entry.is_dir(follow_symlinks=False) and not checkpoints.process_exists(int(match[2]))):
                continue
            if match[1] == "old" and not os.path.lexists(target):  # killed between its two renames
                os.rename(entry.path, target)
                log.info("put back %s, which a killed convert.py had set aside as %s", target, entry.name)
            elif match[1] == "tmp" or os.path.isdir(target):
                shutil.rmtree(entry.path, ignore_errors=True)
                log.info("removed %s, left by a killed convert.py", entry.path)


# ---- running an export in its own runtime --------------------------------------------------------

def litert_interpreter():
    """LiteRT's interpreter: ai-edge-litert's, else TensorFlow's (the same runtime, deprecated there)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "LiteRT (ai-edge-litert)"
    except ImportError:
        return tensorflow().lite.Interpreter, "LiteRT (tf.lite.Interpreter)"


def runtime(target, format, content=None):
    """(translate, name): a function that runs the export at TARGET (or LiteRT's `content` bytes) in its own
    runtime, batch of images in [-1, 1] -> translated batch, and the runtime's name."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if format == "saved_model":
        tf = tensorflow()
        signature = tf.saved_model.load(target).signatures["serving_default"]
        return (lambda batch: signature(image=tf.constant(batch))[OUTPUT_NAME].numpy(),
                f"TensorFlow {tf.__version__} (tf.saved_model.load)")
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
        return (lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0],
                f"onnxruntime {onnxruntime.__version__}")
    Interpreter, name = litert_interpreter()
    source = dict(model_content=content) if content is not None else dict(model_path=target)
    runner = Interpreter(**source, num_threads=cores).get_signature_runner()
    from quiet import stderr_silenced

    def translate(batch):
        with stderr_silenced():  # its note on the XNNPACK delegate, when it resizes
            return runner(**{INPUT_NAME: batch})[OUTPUT_NAME]

    return translate, f"{name}, {cores} threads"


def sample_images(count, size=TEST_SIZE, seed=0):
    """`count` smooth random colour fields in [-1, 1] (structure for the network, no image files needed)."""
    tf = tensorflow()
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, 4, 4, 3)).astype(np.float32)
    return tf.image.resize(coarse, (size, size), "bicubic").numpy().clip(-1, 1)


def quantization_report(target, content, float32):
    """One line: the quantized model's size and its largest and mean difference from float32 (8-bit levels)."""
    image = sample_images(1)
    quantized, _ = runtime(target, "litert", content)
    plain, _ = runtime(target, "litert", float32)
    levels = np.abs(quantized(image) - plain(image)) * 127.5
    return (f"{len(content) / 2 ** 20:.2f} MiB (float32: {len(float32) / 2 ** 20:.2f} MiB); differs from float32 by "
            f"{levels.max():.2f} levels of 8 bits at most, {levels.mean():.3f} on average, on a "
            f"{TEST_SIZE}x{TEST_SIZE} test image")


def images_per_second(translate, batch):
    """How many images a second `translate` does, for TIME_IMAGES images in batches like `batch` (one at least)."""
    calls = max(1, TIME_IMAGES // len(batch))
    started = time.perf_counter()
    for _ in range(calls):
        translate(batch)
    return calls * len(batch) / (time.perf_counter() - started)


def timing_lines(generator, target, format):
    """images/s of generate.py's path (inference.translate_images on the loaded generator, the CPU kernels
    on) and of the export in its runtime, at TIME_BATCHES on TEST_SIZE-square images: the median of
    TIME_ROUNDS rounds that take each path in turn, so that a busy spell of a shared machine slows them
    alike, and the range."""
    import inference

    def generate_path(batch):
        with kernels(True):
            return np.stack(inference.translate_images(generator, list(batch), len(batch)))

    paths = {"generate.py's path (Keras, TensorFlow)": generate_path}
    if format != "keras":
        translate, name = runtime(target, format)
        paths[f"{os.path.basename(target)} in {name}"] = translate
    batches = {size: sample_images(size) for size in TIME_BATCHES}
    for translate in paths.values():
        for batch in batches.values():
            translate(batch)  # traces, allocates: untimed
    speeds = {(name, size): [] for name in paths for size in TIME_BATCHES}
    for _ in range(TIME_ROUNDS):
        for name, translate in paths.items():
            for size, batch in batches.items():
                speeds[name, size].append(images_per_second(translate, batch))
    lines = [f"images/s at {TEST_SIZE}x{TEST_SIZE}, batches of " + " and ".join(map(str, TIME_BATCHES))
             + f" (median of {TIME_ROUNDS} rounds, and range):"]
    for name in paths:
        figures = [speeds[name, size] for size in TIME_BATCHES]
        lines.append(f"  {name}: " + "   ".join(f"{np.median(f):.3g} ({min(f):.3g}-{max(f):.3g})" for f in figures))
    return lines
