"""convert.py's exports (SavedModel, ONNX, LiteRT): each run by its own runtime alone, in a process that
cannot import this project, against generate.py's translation (inference.translate_images) at two sizes;
LiteRT's quantized weights; the command line's refusals, which leave nothing written; and a full disk, in
convert.py and in evaluate.py's classifier, one line with the way on."""
import errno
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import convert
import cpu_kernels
import export
import inference
import networks
import pretrained
from quiet import keras
from conftest import cli_error, smooth_image
from script_runner import session_scripts

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PTH = ROOT / "tests" / "fixtures" / "reference_legacy.pth"  # the reference's generator: ngf 4, 2 blocks
TARGETS = {"saved_model": "saved_model", "onnx": "generator.onnx", "litert": "generator.tflite"}
# (source, format): each format from a .keras file and from a .pth; a run folder's BtoA generator in one
# format (--run-dir and --direction only pick the source file, the same for every format)
EXPORTS = [(source, format) for source in ("keras", "pth") for format in TARGETS] + [("run_BtoA", "saved_model")]
SIZES = ((2, 32, 48), (1, 60, 44))  # (batch, height, width): two sizes the residual network takes
LEVEL = 1 / 127.5  # one level of an 8-bit image in [-1, 1]

# Runs each export in its own runtime, as docs/export.md shows: run by `python -I` from a folder of its
# own, so that none of this project's modules can be imported, and checked to have imported none. The
# runtimes load first, while convert.py exports; then the exports to run come as a line on stdin.
RUNTIME_ONLY = r"""
import json, os, sys
import numpy as np
import onnxruntime
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
jobs, images, results = json.loads(sys.stdin.readline()), np.load(sys.argv[1]), {}
for name, path, format in jobs:
    for size in images.files:
        batch = images[size]
        if format == "saved_model":
            translate = tf.saved_model.load(path).signatures["serving_default"]
            out = translate(image=tf.constant(batch))["translated"].numpy()
        elif format == "onnx":
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = session.run(["translated"], {"image": batch})[0]
        else:
            translate = Interpreter(model_path=path).get_signature_runner()
            out = translate(image=batch)["translated"]
        results[f"{name}/{size}"] = out
project = set(sys.argv[3:]) & set(sys.modules)  # this project's modules
assert not project, project
np.savez(sys.argv[2], **results)
os._exit(0)  # without TensorFlow's clean-up at the end: seconds that prove nothing
"""


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "convert.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def one_line_error(result):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: "), result.stderr
    return lines[0][len("convert.py: error: "):]


def trained_like(seed):
    """A tiny residual generator whose translations span most of [-1, 1], as a trained one's do (the
    0.02 initialisation alone keeps them near 0, where rounding errors would hide)."""
    networks.keras.utils.set_random_seed(seed)
    generator = networks.build_generator(4, 1, "transpose", 0.02)
    out = generator.get_layer("out_conv")
    kernel, bias = out.get_weights()
    out.set_weights([kernel * 12, bias + 0.1])
    return generator


def sample_images(seed=0):
    rng = np.random.default_rng(seed)
    return {f"{height}x{width}": np.stack([smooth_image(rng, height, width) for _ in range(batch)])
            .astype(np.float32) / 127.5 - 1 for batch, height, width in SIZES}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every format exported by convert.py from a .keras file and from a .pth (EXPORTS), and one from a run
    folder's BtoA generator, then run by its runtime alone (RUNTIME_ONLY); beside them, generate.py's
    translations of the same images by each source, made meanwhile."""
    folder = tmp_path_factory.mktemp("exports")
    np.savez(folder / "images.npz", **sample_images())
    isolated = folder / "isolated"
    isolated.mkdir()
    with open(folder / "runtime.err", "w+") as stderr:
        modules = sorted(path.stem for path in ROOT.glob("*.py"))
        runtime = subprocess.Popen([sys.executable, "-I", "-c", RUNTIME_ONLY, str(folder / "images.npz"),
                                    str(folder / "outputs.npz"), *modules], cwd=isolated, text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            run_dir = folder / "run"
            run_dir.mkdir()
            trained_like(1).save(run_dir / "generator_ab.keras")
            trained_like(2).save(run_dir / "generator_ba.keras")
            sources = {"keras": run_dir / "generator_ab.keras", "pth": FIXTURE_PTH,
                       "run_BtoA": run_dir / "generator_ba.keras"}
            jobs = []
            for source, format in EXPORTS:
                target = folder / source / TARGETS[format]
                if source == "run_BtoA":
                    convert.main(["--run-dir", str(run_dir), "--direction", "BtoA", str(target), "--format", format])
                else:
                    convert.main([str(sources[source]), str(target)])  # the format from the name
                jobs.append((f"{source}/{format}", str(target), format))
            runtime.stdin.write(json.dumps(jobs) + "\n")
            runtime.stdin.flush()
            cpu_kernels.use(True)  # as generate.py translates
            expected = {}
            for source, path in sources.items():
                generator = pretrained.load_generator(str(path))
                for size, images in sample_images().items():
                    expected[f"{source}/{size}"] = np.stack(inference.translate_images(generator, list(images)))
            cpu_kernels.use(False)
            runtime.communicate(timeout=300)
        finally:
            runtime.kill()
        stderr.seek(0)
        assert runtime.returncode == 0, stderr.read()[-3000:]
    return types.SimpleNamespace(sources=sources, outputs=dict(np.load(folder / "outputs.npz")), expected=expected,
                                 folder=folder)


@pytest.mark.slow  # every export run by its runtime in a process of its own (the exports fixture)
@pytest.mark.parametrize("source, format", EXPORTS)
def test_each_export_runs_in_its_own_runtime_as_generate_translates(exports, source, format):
    for size, images in sample_images().items():
        expected, got = exports.expected[f"{source}/{size}"], exports.outputs[f"{source}/{format}/{size}"]
        assert got.shape == images.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() < LEVEL, f"{source} {format} {size}"
        assert np.abs(expected).mean() > 0.2 and np.abs(expected).max() > 0.9  # translations that say something


@pytest.mark.slow
def test_each_export_says_what_it_takes_beside_it(exports):
    import onnx

    folder = exports.folder
    for source in ("keras", "pth"):
        for format, name in TARGETS.items():
            readme = (folder / source / name / "README.txt" if format == "saved_model"
                      else folder / source / f"{name}.README.txt").read_text()
            assert "NHWC (batch, height, width, 3), float32 in [-1, 1]" in readme
            assert "any multiples of 4, at least 8" in readme
            assert f'"{name}"' in readme  # the snippet that runs it names it
        assert sorted(os.listdir(folder / source)) == sorted(
            ["saved_model", "generator.onnx", "generator.onnx.README.txt", "generator.tflite",
             "generator.tflite.README.txt"])  # no temporaries left
    model = onnx.load(folder / "keras" / "generator.onnx")
    assert {prop.key: prop.value for prop in model.metadata_props}["input"] == "NHWC float32 RGB in [-1, 1]"
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (model.graph.input[0], model.graph.output[0])]
    assert dims == [["batch", "height", "width", 3]] * 2


@pytest.mark.slow
def test_quantized_litert_is_smaller_prints_its_difference_and_runs(tmp_path, capsys):
    """Differences in 8-bit levels from generate.py's translation: float16 weights round, int8 ones move
    a translation by a few levels (measured 7-11 at most, 1.3-1.6 on average over three seeds). Sizes
    beside the float32 export of the same generator."""
    from ai_edge_litert.interpreter import Interpreter

    source = tmp_path / "g.keras"
    networks.keras.utils.set_random_seed(0)
    generator = networks.build_generator(16, 1, "transpose", 0.02)  # weights enough to outweigh the graph
    generator.save(source)
    convert.main([str(source), str(tmp_path / "g.tflite")])
    images = sample_images()["32x48"]
    expected = np.stack(inference.translate_images(generator, list(images)))
    # the size beside float32's, and the largest and mean difference in levels, each at most
    for quantize, size_ratio, largest, mean in (("float16", 0.6, 1, 0.1), ("int8", 0.35, 16, 3)):
        target = tmp_path / f"{quantize}.tflite"
        convert.main([str(source), str(target), "--quantize", quantize])
        printed = capsys.readouterr().out.strip().splitlines()[-1]
        assert printed.startswith(f"{quantize}: ") and "MiB (float32: " in printed
        assert "levels of 8 bits at most" in printed
        assert target.stat().st_size < size_ratio * (tmp_path / "g.tflite").stat().st_size
        assert f"{quantize} weights" in (tmp_path / f"{quantize}.tflite.README.txt").read_text()
        got = Interpreter(model_path=str(target)).get_signature_runner()(image=images)["translated"]
        assert np.abs(got - expected).max() < largest * LEVEL and np.abs(got - expected).mean() < mean * LEVEL, \
            quantize


@pytest.mark.slow
def test_a_failed_export_leaves_nothing_and_an_overwritten_one_is_replaced_whole(exports, tmp_path, monkeypatch):
    source = tmp_path / "g.keras"
    trained_like(3).save(source)

    def half_file(model, path, readme):  # a full disk, halfway through the file
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    def half_folder(model, folder):  # ... or through the SavedModel's folder
        Path(folder).mkdir()
        (Path(folder) / "saved_model.pb").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    for target, writer, fake in (("g.onnx", "write_onnx", half_file), ("sm", "write_saved_model", half_folder)):
        with monkeypatch.context() as patch:
            patch.setattr(export, writer, fake)
            with pytest.raises(convert.cli.UsageError, match=f"^{tmp_path / target}: could not write \\(No space left"):
                convert.main([str(source), str(tmp_path / target)])
        assert sorted(os.listdir(tmp_path)) == ["g.keras"]
    shutil.copytree(exports.folder / "keras" / "saved_model", tmp_path / "sm")  # an earlier export (another generator)
    before = (tmp_path / "sm" / "saved_model.pb").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(export, "write_saved_model", half_folder)
        with pytest.raises(convert.cli.UsageError, match="nothing half-written is left: make room, then run"):
            convert.main([str(source), str(tmp_path / "sm"), "--overwrite"])
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.keras", "sm"]
    convert.main([str(source), str(tmp_path / "sm"), "--overwrite"])
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["g.keras", "sm"] and "README.txt" in os.listdir(tmp_path / "sm")


@pytest.mark.slow
def test_a_cpu_tuned_saved_model_keeps_the_cpu_convolutions_and_translates_the_same(exports, tmp_path):
    from quiet import tensorflow

    tf = tensorflow()
    source = exports.sources["keras"]
    convert.main([str(source), str(tmp_path / "tuned"), "--cpu-tuned"])
    images = sample_images()["32x48"]
    expected = np.stack(inference.translate_images(pretrained.load_generator(str(source)), list(images)))
    graphs = {}
    # the plain export of the same generator: the fixture's
    for name, path in (("tuned", tmp_path / "tuned"), ("plain", exports.folder / "keras" / "saved_model")):
        translate = tf.saved_model.load(str(path)).signatures["serving_default"]
        assert np.abs(translate(image=tf.constant(images))["translated"].numpy() - expected).max() < LEVEL
        graphs[name] = {node.op for function in translate.graph.as_graph_def().library.function
                        for node in function.node_def}
    folded = "space_to_depth" in cpu_kernels.use(True)  # --cpu-tuned's kernels: none on a GPU or with them off
    assert ("SpaceToDepth" in graphs["tuned"]) == folded and "SpaceToDepth" not in graphs["plain"]


def test_bad_input_is_one_line_and_writes_nothing(request, tmp_path):
    """Each command line's exit status and whole stderr, as `python convert.py` gives them
    (test_generate.ScriptRunner)."""
    (tmp_path / "notes.txt").write_text("not a folder")
    networks.build_discriminator(4, "patch70", False, 0.02).save(tmp_path / "discriminator.keras")
    trained_like(6).save(tmp_path / "g.keras")
    (tmp_path / "taken.onnx").write_bytes(b"the user's")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"an image")
    (tmp_path / "n.tflite.README.txt").write_text("the user's readme")
    (tmp_path / "d.onnx.README.txt").mkdir()
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    names = sorted(tmp_path.iterdir())
    cases = [(["discriminator.keras", "out.onnx"], "discriminator.keras: holds no CycleGAN generator (a model "
              "'discriminator' without the layers of networks.py's generators)"),
             (["photos/a.png", "out.tflite"], "photos/a.png: not a generator file (expected a .keras model or a "
              "PyTorch .pth)"),
             (["g.keras", "notes.txt/out.onnx"], f"notes.txt/out.onnx: cannot write there ({tmp_path / 'notes.txt'} "
              "is a file)"),
             (["g.keras", "taken.onnx"], "taken.onnx: already exists; pass --overwrite to replace it"),
             (["g.keras", "photos", "--format", "saved_model", "--overwrite"], "photos: is a folder that holds no "
              "SavedModel; it is not replaced, even with --overwrite (give another name)"),
             (["g.keras", "out.tflite", "--format", "onnx"], "out.tflite: expected a .onnx file name for the ONNX "
              "model"),
             (["g.keras", "out.bin"], "out.bin: cannot tell the format from its ending; name it .keras, .onnx or "
              ".tflite, or without an ending for a SavedModel folder, or pass --format"),
             (["g.keras", "out.onnx", "--quantize", "int8"], "--quantize int8: LiteRT only (a .tflite TARGET or "
              "--format litert)"),
             (["--run-dir", "photos", "out.onnx"], "--run-dir photos: no generator_ab.keras there (not a run of "
              "train.py, or one that has not saved its generators yet)"),
             (["g.keras", "n.tflite"], "n.tflite.README.txt: already exists (the README written beside n.tflite); "
              "pass --overwrite to replace it"),
             (["g.keras", "d.onnx", "--overwrite"], "d.onnx.README.txt: is a folder; expected the name of the README "
              "written beside d.onnx"),
             (["photos", "out.tflite"], "photos: a folder, not a generator file (for a run made by train.py give "
              "--run-dir photos, or the path of its generator_ab.keras)")]
    scripts = session_scripts(request)
    for args, message in cases:
        assert one_line_error(scripts.run("convert.py", *args, cwd=tmp_path)) == message, args
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    for args in (["", "out.tflite"], ["g.keras", ""], ["--run-dir", "", "out.onnx"]):  # the parser's refusal
        result = scripts.run("convert.py", *args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].endswith(": expected a path, got an empty one"), args
    assert sorted(tmp_path.iterdir()) == names  # no TARGET, no temporary


def test_help_explains_every_option():
    result = run_script("--help")
    assert result.returncode == 0
    for option in ("SOURCE", "TARGET", "--run-dir", "--direction", "--format", "--quantize", "--cpu-tuned", "--time",
                   "--overwrite"):
        assert (option.lower() if option.isupper() else option) in result.stdout
    assert "(default: AtoB)" in result.stdout and "{keras,litert,onnx,saved_model}" in result.stdout
    text = " ".join(result.stdout.split())
    assert "instead of SOURCE (default: none)" in text and "from float32 (default: float32 weights)" in text


@pytest.mark.slow
def test_a_convert_killed_between_its_renames_or_beside_another_is_finished_or_refused(exports, tmp_path, caplog):
    """One convert.py per TARGET (a lock beside it); the README a killed one put in place before its model is
    replaced by the rerun, without --overwrite; a SavedModel it had set aside (NAME.oldPID) is put back; and
    TensorFlow's own error for a full disk is one line naming TARGET."""
    import logging

    import tensorflow as tf

    source = tmp_path / "g.keras"
    trained_like(3).save(source)
    with export.target_lock(str(tmp_path / "busy.onnx")):
        with pytest.raises(convert.cli.UsageError, match=f"^{tmp_path / 'busy.onnx'} is in use by another convert.py"):
            convert.convert(str(source), str(tmp_path / "busy.onnx"))
    readme = tmp_path / "m.onnx.README.txt"
    readme.write_text("m.onnx: ONNX model of a CycleGAN residual generator, exported by convert.py from g.keras.\n")
    convert.convert(str(source), str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").is_file() and "exported by convert.py" in readme.read_text()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    shutil.copytree(exports.folder / "keras" / "saved_model", tmp_path / f"sm.old{dead}")
    with caplog.at_level(logging.INFO, logger="cyclegan"):
        export.remove_stale_temporaries(str(tmp_path / "sm"), "saved_model")
    assert (tmp_path / "sm" / "saved_model.pb").read_bytes() == (
        exports.folder / "keras" / "saved_model" / "saved_model.pb").read_bytes()
    assert f"put back {tmp_path / 'sm'}, which a killed convert.py had set aside as sm.old{dead}" in caplog.text

    def full_disk(model, folder):
        raise tf.errors.ResourceExhaustedError(None, None, f"{folder}/saved_model.pb.tmp1; No space left on device")

    export_saved_model, export.write_saved_model = export.write_saved_model, full_disk
    try:
        with pytest.raises(convert.cli.UsageError) as error:
            convert.convert(str(source), str(tmp_path / "full"))
        assert str(error.value) == (f"{tmp_path / 'full'}: could not write (No space left on device); nothing "
                                    "half-written is left: make room, then run the same command again")
    finally:
        export.write_saved_model = export_saved_model
    assert not any(name.startswith("full") for name in os.listdir(tmp_path))


# ---- a full disk: one line naming the file and the way on, nothing half-written ---------------------

def full_disk(model, temporary, *args, **kwargs):
    """keras.Model.save on a full disk: half a file, and an OSError naming none (as Keras' writer raises it)."""
    Path(temporary).write_bytes(b"half a model")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_converting_to_keras_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(keras.Model, "save", full_disk)
    assert cli_error(convert.main, [str(FIXTURE_PTH), str(tmp_path / "c.keras")]) == (
        f"convert.py: error: {tmp_path / 'c.keras'}: could not write (No space left on device); nothing half-written "
        "is left: make room, then run the same command again")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_evaluate_caches_its_classifier_is_one_line_and_leaves_neither_file(
        dataset, tmp_path, monkeypatch):
    """Its facts are written first: a model that cannot be written takes them away too (a rerun trains again)."""
    import evaluate
    from test_evaluate import make_run

    run_dir = make_run(tmp_path / "run", dataset)
    monkeypatch.setattr(keras.Model, "save", full_disk)
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(tmp_path / "cls.keras")]) == (
        f"evaluate.py: error: {tmp_path / 'cls.keras'}: could not write the domain classifier (No space left on "
        "device); nothing half-written is left: make room, then run the same command again")
    assert sorted(os.listdir(tmp_path)) == ["run"]
