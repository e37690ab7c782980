"""Bad input, tried for real: every bad option or file answered with one line (no traceback), a
non-zero exit, and nothing written over. Most cases call main() in this process (a process start costs
seconds of imports); one test runs train.py and generate.py as real processes."""
import json
import os
from pathlib import Path
import shutil

import pytest

from config import Config, as_json
import generate
import train

from conftest import PATIENCE, TINY, cli_error, output, start


def test_out_of_memory_while_building_or_training_is_one_line(dataset, tmp_path, monkeypatch):
    """What TensorFlow raises when a network that passed the size check still does not fit (a GPU's memory)."""
    import tensorflow as tf

    def exhausted(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[3,3,256,256]\nmore")

    monkeypatch.setattr(train.cyclegan, "build_gan", exhausted)
    message = cli_error(train.main, ["--dataroot", str(dataset), "--runs-root", str(tmp_path), "--name", "big", *TINY])
    assert message == ("train.py: error: out of memory (ResourceExhaustedError: OOM when allocating tensor with "
                       "shape[3,3,256,256]); make --batch-size, --image-size, --ngf, --ndf or --n-res-blocks smaller")


@pytest.fixture
def places(dataset, tmp_path):
    """Paths for the bad-input cases: {data} a good dataset, {file} a plain file, {runs} a runs root
    whose run "old" has a checkpoint and "empty" has a config but none."""
    (tmp_path / "file.txt").write_text("a file")
    for name, folder in (("a_file", "trainA"), ("empty", "trainB")):
        shutil.copytree(dataset, tmp_path / name)
        shutil.rmtree(tmp_path / name / folder)
    (tmp_path / "a_file" / "trainA").write_text("a file")
    (tmp_path / "empty" / "trainB").mkdir()
    for run in ("old", "empty"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "config.json").write_text(json.dumps(as_json(Config(dataroot=str(dataset), ngf=4))))
    (tmp_path / "runs" / "old" / "checkpoints").mkdir()
    (tmp_path / "runs" / "old" / "checkpoints" / "step-000000004.npz").write_bytes(b"kept as it is")
    return dict(data=Path(dataset), file=tmp_path / "file.txt", runs=tmp_path / "runs", tmp=tmp_path)


def fill(argv, places):
    return [arg.format(**places) for arg in argv]


TRAIN_ERRORS = [
    ([], "--dataroot is required"),
    (["--dataroot", "{tmp}/missing", "--runs-root", "{runs}"], "--dataroot {tmp}/missing: not a folder"),
    (["--dataroot", "{file}", "--runs-root", "{runs}"], "--dataroot {file}: not a folder"),
    (["--dataroot", "{tmp}/a_file", "--runs-root", "{runs}"], "{tmp}/a_file/trainA: is a file, expected a folder of images"),
    (["--dataroot", "{tmp}/empty", "--runs-root", "{runs}"], "{tmp}/empty/trainB: holds no images"),
    (["--dataroot", "{data}", "--epochs", "0", "--epochs-decay", "0", "--runs-root", "{runs}"], "both 0: nothing to train"),
    (["--dataroot", "{data}", "--runs-root", "{runs}", "--seed", "0", "--jit"],
     "--jit with --seed: the op determinism --seed turns on keeps Keras from compiling with XLA under TensorFlow"),
    (["--dataroot", "{data}", "--runs-root", "{file}"], "{file}: is a file, expected a folder for the runs"),
    (["--dataroot", "{data}", "--runs-root", "{runs}", "--name", "old"],
     "{runs}/old already holds a run (checkpoints, config.json): continue it with --resume, or give another --name"),
    (["--dataroot", "{data}", "--runs-root", "{runs}", "--name", "empty"], "{runs}/empty already holds a run (config.json)"),
    (["--dataroot", "{data}", "--runs-root", "{runs}", "--ngf", "100000000"],
     "--ngf 100000000 --ndf 64 --n-res-blocks 9: training needs at least 8.26e+11 GiB for the weights"),
    (["--resume", "--runs-root", "{runs}", "--name", "none"], "{runs}/none/config.json: not found"),
    (["--resume", "--runs-root", "{runs}", "--name", "old", "--ngf", "8"], "--ngf 8 contradicts the run"),
]


@pytest.mark.parametrize("argv, expected", TRAIN_ERRORS)
def test_train_bad_input_is_one_line_and_writes_nothing(places, argv, expected):
    before = sorted(p for p in places["tmp"].rglob("*"))
    message = cli_error(train.main, fill(argv, places))
    assert expected.format(**places) in message
    assert sorted(p for p in places["tmp"].rglob("*")) == before
    assert (places["runs"] / "old" / "checkpoints" / "step-000000004.npz").read_bytes() == b"kept as it is"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A real generator, a file that is not a model, and a model whose Lambda layer would run code."""
    import keras

    import networks

    folder = tmp_path_factory.mktemp("models")
    networks.build_generator(4, 1, "transpose", 0.02, name="generator_ab").save(folder / "generator.keras")
    (folder / "text.keras").write_text("not a model")
    networks.build_discriminator(4, "patch70", False, 0.02).save(folder / "discriminator.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).save(folder / "lambda.keras")
    return folder


GENERATE_ERRORS = [
    (["--run-dir", "{runs}/empty"], "--run-dir {runs}/empty: no generator_ab.keras yet (train.py writes a run's "
     "generators when it stops, at its end or on Ctrl-C; a run in progress has none): wait for it, or give "
     "--generator"),
    (["--run-dir", "{tmp}/missing"], "--run-dir {tmp}/missing: no such folder"),
    (["--generator", "{models}/text.keras", "--input", "{data}/testA", "--output", "{tmp}/out"],
     "{models}/text.keras: not a Keras model file"),
    (["--generator", "{models}/lambda.keras", "--input", "{data}/testA", "--output", "{tmp}/out"],
     "{models}/lambda.keras: not a Keras model file (Requested the deserialization of a `Lambda` layer"),
    (["--generator", "{models}/discriminator.keras", "--input", "{data}/testA", "--output", "{tmp}/out"],
     "{models}/discriminator.keras: holds no CycleGAN generator (a model 'discriminator' without the layers of "
     "networks.py's generators)"),
    (["--generator", "{runs}/old", "--input", "{data}/testA", "--output", "{tmp}/out"],
     "{runs}/old: a folder, not a model file (expected a .keras file; in this run of train.py: generator_ab.keras "
     "or generator_ba.keras)"),
    (["--generator", "{data}", "--input", "{data}/testA", "--output", "{tmp}/out"],
     "{data}: a folder, not a model file (expected a .keras file)"),
    (["--generator", "{models}/generator.keras", "--input", "{file}", "--output", "{tmp}/out"],
     "--input {file}: is a file, expected a folder of images (.jpg/.png/.bmp)"),
    (["--run-dir", "{runs}/old", "--generator", "{models}/generator.keras", "--input", "{data}/testA/img000.png"],
     "--input {data}/testA/img000.png: is a file, expected a folder of images (.jpg/.png/.bmp)"),
    (["--generator", "{models}/generator.keras", "--input", "{tmp}/missing", "--output", "{tmp}/out"],
     "--input {tmp}/missing: no such folder, expected a folder of images (.jpg/.png/.bmp)"),
    (["--generator", "{models}/generator.keras", "--input", "{data}/testA", "--output", "{file}"],
     "--output {file}: is a file, expected a folder for the translations"),
    (["--run-dir", "{runs}/old", "--generator", "{models}/generator.keras", "--output", "{file}", "--overwrite"],
     "--output {file}: is a file, expected a folder for the translations"),
    (["--generator", "{models}/generator.keras", "--input", "{data}/testA", "--output", "{file}/out"],
     "--output {file}/out: cannot write there ({file} is a file); expected a folder it can write"),
    (["--generator", "{models}/generator.keras", "--input", "{data}/testA", "--zip", "{file}/sub/out.zip"],
     "--zip {file}/sub/out.zip: cannot write there ({file} is a file); expected a folder it can write"),
]


@pytest.mark.parametrize("argv, expected", GENERATE_ERRORS)
def test_generate_bad_input_is_one_line_and_writes_nothing(places, model_files, argv, expected):
    places = dict(places, models=model_files)
    before = sorted(p for p in places["tmp"].rglob("*"))
    message = cli_error(generate.main, fill(argv, places))
    assert expected.format(**places) in message
    assert sorted(p for p in places["tmp"].rglob("*")) == before


@pytest.mark.parametrize("argv, expected", [
    (["--direction", "AtoC"], "argument --direction: invalid choice: 'AtoC' (choose from 'AtoB', 'BtoA')"),
    (["--run-dir", "r", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (["--run-dir", "r", "--input", ""], "argument --input: expected a path, got an empty one"),
    (["--run-dir", "r", "--output", ""], "argument --output: expected a path, got an empty one"),
    (["--generator", "", "--input", "i", "--zip", "z.zip"], "argument --generator: expected a path, got an empty one")])
def test_generate_options_the_parser_refuses(capsys, argv, expected):
    with pytest.raises(SystemExit) as ended:
        generate.main(argv)
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f": error: {expected}")  # PROG: error: ...


@pytest.mark.slow
def test_real_processes_end_bad_input_without_a_traceback(places, model_files):
    """Two processes at once (they mostly wait on imports): exit 1, one line, no traceback; train.py's
    resume of a hand-edited config.json has nothing else on stderr either."""
    config = dict(as_json(Config(dataroot=str(places["data"]), ngf=4)), n_res_blocks=None)
    (places["runs"] / "null").mkdir()
    (places["runs"] / "null" / "config.json").write_text(json.dumps(config))
    runs = {
        "train.py": (["--resume", "--runs-root", places["runs"], "--name", "null"], "the key 'n_res_blocks': null"),
        "generate.py": (["--generator", model_files / "text.keras", "--input", places["data"] / "testA",
                         "--output", places["tmp"] / "out"], "not a Keras model file"),
    }
    processes = {script: start(script, args, places["tmp"] / "logs" / script) for script, (args, _) in runs.items()}
    for script, process in processes.items():
        assert process.wait(timeout=PATIENCE) == 1
        stderr = output(process)[1]
        assert "Traceback" not in stderr
        last_line = stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"{script}: error: ") and runs[script][1] in last_line
    assert output(processes["train.py"])[1].strip().splitlines() == [
        f"train.py: error: {places['runs'] / 'null' / 'config.json'}: the key 'n_res_blocks': null"]
    assert os.listdir(places["runs"] / "null") == ["config.json"] and not (places["tmp"] / "out").exists()
