"""Save a generator for use elsewhere: a PyTorch CycleGAN generator (.pth, e.g. from `python download.py
--pretrained horse2zebra`) as a .keras file, which generate.py, evaluate.py and train.py --start-ab then load
like a run's generator; or any generator they load (a run's .keras, a .pth) as a TensorFlow SavedModel, an
ONNX model or a LiteRT (.tflite) model, which run in their own runtimes without this project's code.

    python convert.py pretrained/horse2zebra.pth horse2zebra.keras
    python convert.py --run-dir runs/h2z --direction BtoA z2h.onnx
    python convert.py runs/h2z/generator_ab.keras h2z_saved_model        # a folder: a SavedModel
    python convert.py pretrained/horse2zebra.pth h2z.tflite --quantize float16 --time

The format follows TARGET's ending unless --format says it. An export takes RGB images in [-1, 1], NHWC,
float32, of any height and width the network takes (multiples of 4, or of 256 for the U-Net); a README
beside it (inside a SavedModel's folder) says so, and how to run it; docs/export.md has more. Every export
is written whole or not at all: into a temporary beside TARGET, then renamed.

The network (ngf, residual blocks) of a .pth is read from the tensors' shapes; see pretrained.py. The
exports themselves (writing them, running them in their runtimes) are export.py's.
"""
import argparse
import importlib.util
import os

import checkpoints
import cli
import export
import pretrained
from checkpoints import write_atomically

DIRECTION = "AtoB"  # --run-dir's generator
QUANTIZE = ("float16", "int8")  # LiteRT weights: float16, or int8 with dynamic-range activations
ONNX_PACKAGES = "tf2onnx==1.17.0 onnx==1.23.2"  # what ONNX export needs beyond requirements.txt


def build_parser():
    p = argparse.ArgumentParser(
        description="Save a CycleGAN generator (a run's .keras, or a PyTorch .pth state_dict of the reference's "
                    "ResnetGenerator) as a Keras .keras model, a TensorFlow SavedModel, an ONNX model or a LiteRT "
                    "(.tflite) model.", formatter_class=cli.HelpFormatter)
    p.add_argument("source", nargs="?", type=cli.path,
                   help="the generator to export: a .keras file or a PyTorch .pth (or give --run-dir)")
    p.add_argument("target", type=cli.path, help="the file to write (a folder for a SavedModel)")
    p.add_argument("--run-dir", type=cli.path,
                   help="export this run's generator (train.py's run folder) instead of SOURCE (default: none)")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default=DIRECTION,
                   help="with --run-dir: which of the run's generators (AtoB: generator_ab.keras)")
    p.add_argument("--format", choices=sorted(export.FORMATS),
                   help="what to write (default: from TARGET's ending: .keras a Keras model, .onnx ONNX, .tflite "
                        "LiteRT, no ending a SavedModel folder); keras takes a .pth only")
    p.add_argument("--quantize", choices=QUANTIZE,
                   help="LiteRT only: store the weights as float16 (half the size), or as int8 with activations "
                        "quantized on the fly (a quarter); prints the size and the difference from float32 "
                        "(default: float32 weights)")
    p.add_argument("--cpu-tuned", action="store_true",
                   help="SavedModel only: trace it with cpu_kernels' CPU kernels (Winograd, folded channels), "
                        "faster in TensorFlow on a CPU but then in the graph wherever it runs; without it every "
                        "export has networks.py's plain Keras ops, which every runtime converts and runs well")
    p.add_argument("--time", action="store_true",
                   help=f"after exporting, time the export in its runtime beside generate.py's path on "
                        f"{export.TEST_SIZE}x{export.TEST_SIZE} images (images/s)")
    p.add_argument("--overwrite", action="store_true", help="replace TARGET, and the README beside it, if they exist")
    return p


# ---- checking the command line ------------------------------------------------------------------

def target_format(target, format=None):
    """The format to write: `format`, checked against TARGET's ending, or read from it."""
    ending = os.path.splitext(target.rstrip(os.sep))[1].lower()
    if format is None:
        by_ending = {value: key for key, value in export.FORMATS.items()}
        if ending not in by_ending:
            raise cli.UsageError(f"{target}: cannot tell the format from its ending; name it .keras, .onnx or "
                                 ".tflite, or without an ending for a SavedModel folder, or pass --format")
        return by_ending[ending]
    if format == "saved_model" and ending and ending in export.FORMATS.values():
        raise cli.UsageError(f"{target}: expected a folder name for the SavedModel, not a {ending} file")
    if format != "saved_model" and ending != export.FORMATS[format]:
        raise cli.UsageError(f"{target}: expected a {export.FORMATS[format]} file name for the {export.LABELS[format]}")
    return format


def run_generator(run_dir, direction):
    """The generator file of a run folder (train.py's) for `direction`."""
    import metrics  # here: its imports (data, the classifier) are needed only for a run folder

    if not os.path.isdir(run_dir):
        raise cli.UsageError(f"--run-dir {run_dir}: no such folder (a run made by train.py)")
    path = os.path.join(run_dir, metrics.DIRECTIONS[direction][0] + ".keras")
    if not os.path.isfile(path):
        raise cli.UsageError(f"--run-dir {run_dir}: no {os.path.basename(path)} there (not a run of train.py, "
                             "or one that has not saved its generators yet)")
    return path


def refuse_target(target, format, overwrite):
    """UsageError if TARGET or the README beside it exists (without `overwrite`), is of the wrong kind to
    replace, or cannot be written."""
    readme = export.readme_path(target, format)
    if format not in ("keras", "saved_model") and os.path.lexists(readme) and not export.cut_short(target, readme):
        if not overwrite:  # (a SavedModel's README is inside TARGET)
            raise cli.UsageError(f"{readme}: already exists (the README written beside {target}); pass --overwrite "
                                 "to replace it")
        if os.path.isdir(readme):
            raise cli.UsageError(f"{readme}: is a folder; expected the name of the README written beside {target}")
    if os.path.lexists(target):
        if not overwrite:
            raise cli.UsageError(f"{target}: already exists; pass --overwrite to replace it")
        if format != "saved_model" and os.path.isdir(target):
            raise cli.UsageError(f"{target}: is a folder; expected a file name for the {export.LABELS[format]}")
        if format == "saved_model" and os.path.isdir(target) and not is_saved_model(target):
            raise cli.UsageError(f"{target}: is a folder that holds no SavedModel; it is not replaced, even with "
                                 "--overwrite (give another name)")
    problem = checkpoints.unwritable(os.path.dirname(os.path.abspath(target)))
    if problem:
        raise cli.UsageError(f"{target}: cannot write there ({problem})")


def is_saved_model(folder):
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("saved_model.pb", "saved_model.pbtxt"))


def check_packages(format):
    """UsageError before any work if the format's converter is not installed."""
    if format == "onnx" and not all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnx")):
        raise cli.UsageError(f"--format onnx needs tf2onnx and onnx: pip install {ONNX_PACKAGES} (or "
                             "pip install -r requirements-test.txt)")


# ---- the command --------------------------------------------------------------------------------

def convert(source, target, overwrite=False, format=None, quantize=None, run_dir=None, direction=DIRECTION,
            cpu_tuned=False):
    """Writes the generator of `source` (or of the run `run_dir`'s `direction`) to `target` in `format`
    (whole or not at all). Returns (its structure, the loaded generator, extra lines to print)."""
    if (source is None) == (run_dir is None):
        raise cli.UsageError("give the generator to export (SOURCE), or --run-dir, one of them")
    if source and os.path.isdir(source):
        raise cli.UsageError(f"{source}: a folder, not a generator file (for a run made by train.py give --run-dir "
                             f"{source}, or the path of its generator_ab.keras)")
    format = target_format(target, format)
    if format == "keras" and (run_dir or not source.lower().endswith(pretrained.TORCH_SUFFIXES)):
        raise cli.UsageError(f"{source or run_dir}: expected a PyTorch generator (.pth); a .keras file needs no "
                             "converting")
    if quantize and format != "litert":
        raise cli.UsageError(f"--quantize {quantize}: LiteRT only (a .tflite TARGET or --format litert)")
    if cpu_tuned and format != "saved_model":
        raise cli.UsageError("--cpu-tuned: SavedModel only (other runtimes convert or run those convolutions badly)")
    source = run_generator(run_dir, direction) if run_dir else source
    with export.target_lock(target):
        export.remove_stale_temporaries(target, format)  # first: a SavedModel set aside is put back
        refuse_target(target, format, overwrite)
        return write_target(source, target, format, quantize, cpu_tuned)


def write_target(source, target, format, quantize, cpu_tuned):
    """convert's writing, once TARGET is checked and this process holds its lock."""
    check_packages(format)
    from quiet import backend, tensorflow

    if format != "keras" and backend() != "tensorflow":
        raise cli.UsageError(f"--format {format}: exports through TensorFlow; run with KERAS_BACKEND=tensorflow "
                             f"(now {backend()})")
    tensorflow()  # Keras' saving imports TensorFlow where it is installed: here first, without its start-up notes
    generator, found = pretrained.load_cyclegan_generator(source)
    import inference

    try:
        if format == "keras":
            write_atomically(target, generator.save)
            return found, generator, []
        readme = export.readme_text(target, format, source, found, inference.size_rule(generator), quantize)
        float32 = export.write_export(generator, target, format, readme, quantize, cpu_tuned)
    except OSError as error:  # a full disk: each file is written whole or not at all (write_atomically)
        raise cli.UsageError(f"{target}: could not write ({error.strerror or error}); nothing half-written is left: "
                             "make room, then run the same command again") from None
    lines = [f"input: NHWC float32 RGB in [-1, 1], height and width multiples of {inference.size_rule(generator)[0]} "
             f"({export.readme_path(target, format)})"]
    if quantize:
        with open(target, "rb") as f:
            lines.append(f"{quantize}: " + export.quantization_report(target, f.read(), float32))
    return found, generator, lines


def main(argv=None):
    args = build_parser().parse_args(argv)
    found, generator, lines = convert(args.source, args.target, args.overwrite, args.format, args.quantize,
                                      args.run_dir, args.direction, args.cpu_tuned)
    print(f"saved {args.target}: {export.describe(found)}")
    for line in lines:
        print(line)
    if args.time:
        for line in export.timing_lines(generator, args.target, target_format(args.target, args.format)):
            print(line, flush=True)


if __name__ == "__main__":
    cli.run_cli(main, "convert.py")
