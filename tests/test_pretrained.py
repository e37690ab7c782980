"""PyTorch CycleGAN generators (.pth) read without torch: against outputs PyTorch computed (fixtures/,
made by fixtures/make_pth_fixtures.py), hostile and broken files, and the scripts that take them:
convert.py, generate.py --generator, train.py --start-ab / --start-ba; and a run's generator files that
change while evaluate.py reads them."""
import collections
import json
import os
import pickle
import sys
import time
import types
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import cli
import inference
import networks
import pretrained
import train
from conftest import TINY, write_images
from script_runner import session_scripts

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EXPECTED = np.load(FIXTURES / "expected.npz")
GENERATORS = {"reference_zip": (4, 2), "reference_legacy": (4, 2), "reference_half_legacy": (4, 2),
              "fork_zip": (3, 1), "fork_legacy": (3, 1), "fork_double_zip": (3, 1)}  # name: (ngf, n_res_blocks)


@pytest.fixture
def scripts(request):
    """Runs convert.py's and generate.py's command lines, each as its own `python SCRIPT` would
    (test_generate.ScriptRunner: one process for them all)."""
    return session_scripts(request)


def one_line_error(result, program):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{program}: error: ")
    return last


@pytest.mark.parametrize("name", GENERATORS)
def test_keras_reproduces_pytorch_for_both_formats_and_layouts(name):
    generator = pretrained.load_generator(str(FIXTURES / f"{name}.pth"))
    assert pretrained.structure(generator) == {"netg": "resnet", "ngf": GENERATORS[name][0],
                                               "n_res_blocks": GENERATORS[name][1], "upsample": "transpose"}
    image = EXPECTED["input"]
    single = np.asarray(generator.predict_on_batch(image))
    np.testing.assert_allclose(single, EXPECTED[name], atol=1e-4)
    pair = np.asarray(generator.predict_on_batch(np.concatenate([image, image])))  # the batched norm's path
    np.testing.assert_allclose(pair, np.concatenate([EXPECTED[name]] * 2), atol=1e-4)
    assert np.abs(EXPECTED[name]).mean() > 0.05  # outputs that say something


def test_both_formats_hold_the_same_tensors_and_the_buffers_are_left_out():
    from_zip = pretrained.read_state_dict(str(FIXTURES / "reference_zip.pth"))
    legacy = pretrained.read_state_dict(str(FIXTURES / "reference_legacy.pth"))
    half = pretrained.read_state_dict(str(FIXTURES / "reference_half_legacy.pth"))
    assert list(from_zip) == list(legacy) == list(half)
    assert len(from_zip) == 10 * 2 + 9 * 3  # 10 convolutions' weight and bias, 9 instance norms' 3 buffers
    assert list(from_zip)[:3] == ["model.1.weight", "model.1.bias", "model.2.running_mean"]
    for key in from_zip:
        np.testing.assert_array_equal(from_zip[key], legacy[key])
    assert from_zip["model.1.weight"].dtype == np.float32 and half["model.1.weight"].dtype == np.float16
    assert from_zip["model.2.num_batches_tracked"].dtype == np.int64
    assert not np.allclose(from_zip["model.2.running_var"], 1)  # real statistics, which must not be used
    ngf, blocks, weights = pretrained.generator_weights("reference", from_zip)
    assert (ngf, blocks) == (4, 2) and len(weights) == 10 + 9  # convolutions + norms
    np.testing.assert_array_equal(weights["c7s1_conv"][0], from_zip["model.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(weights["c7s1_norm"][0], np.ones(4))
    fork = pretrained.read_state_dict(str(FIXTURES / "fork_zip.pth"))
    assert list(fork)[:4] == ["module.stem.1.weight", "module.stem.1.bias", "module.stem.2.weight",
                              "module.stem.2.bias"]
    up1 = fork["module.decoder.0.weight"]  # ConvTranspose2d: (in, out, h, w) -> (h, w, out, in)
    assert up1.shape == (12, 6, 3, 3)
    np.testing.assert_array_equal(pretrained.generator_weights("fork", fork)[2]["up1_conv"][0],
                                  up1.transpose(2, 3, 1, 0))


class RunsAShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_naming_a_foreign_global_is_refused_and_nothing_runs(scripts, tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(collections.OrderedDict(w=RunsAShellCommand(f"touch {marker}")), protocol=2)
    in_zip = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(in_zip, "w") as archive:
        archive.writestr("evil_zip/data.pkl", payload)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(payload)
    global_name = f"{os.system.__module__}.system"  # posix.system
    refusal = (f"refusing to load, its pickle asks for {global_name}, which is not a tensor (no code from the "
               "file was run); expected a state_dict saved by torch.save")
    for path in (in_zip, legacy):
        with pytest.raises(cli.UsageError) as error:
            pretrained.load_generator(str(path))
        assert str(error.value) == f"{path}: {refusal}"
    result = scripts.run("convert.py", in_zip, tmp_path / "evil.keras")
    assert one_line_error(result, "convert.py") == f"convert.py: error: {in_zip}: {refusal}"
    assert not marker.exists() and not (tmp_path / "evil.keras").exists()


def fake_torch(monkeypatch):
    """Modules torch and torch._utils with a FloatStorage and _rebuild_tensor_v2 that pickle can name, so
    this test can write .pth files (with any tensor layout) without torch."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only named, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    storage_type = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage, utils._rebuild_tensor_v2 = storage_type, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return storage_type, _rebuild_tensor_v2


def write_zip_pth(path, tensors, monkeypatch):
    """A torch.save zip archive of {name: (float32 elements, offset, size, stride)}, one storage each."""
    storage_type, rebuild = fake_torch(monkeypatch)

    class Storage:
        def __init__(self, key):
            self.key = key

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = Storage(key), offset, size, stride, False, collections.OrderedDict()

        def __reduce__(self):
            return rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return "storage", storage_type, obj.key, "cpu", len(tensors[obj.key][0])
            return None

    state_dict = collections.OrderedDict((name, Tensor(name, *layout)) for name, (_, *layout) in tensors.items())
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("archive/data.pkl", "w") as f:
            Pickler(f, protocol=2).dump(state_dict)
        for name, (elements, *_) in tensors.items():
            archive.writestr(f"archive/data/{name}", np.asarray(elements, "<f4").tobytes())


def test_tensor_layouts_are_read_and_checked_against_their_storage(tmp_path, monkeypatch):
    path = tmp_path / "layouts.pth"
    elements = np.arange(12, dtype=np.float32)
    write_zip_pth(path, {"strided": (elements, 1, (2, 3), (1, 4)), "empty": (elements, 0, (0, 5), (5, 1))},
                  monkeypatch)
    tensors = pretrained.read_state_dict(str(path))
    np.testing.assert_array_equal(tensors["strided"], [[1, 5, 9], [2, 6, 10]])
    assert tensors["empty"].shape == (0, 5)
    write_zip_pth(path, {"outside": (elements, 4, (3, 3), (3, 1))}, monkeypatch)  # elements 4..12 of 12
    with pytest.raises(cli.UsageError) as error:
        pretrained.read_state_dict(str(path))
    assert str(error.value) == (f"{path}: not a readable PyTorch .pth file (ValueError: a tensor reaches element "
                                "12 of a storage of 12)")
    write_zip_pth(path, {"negative": (elements, 0, (2, 2), (-1, 1))}, monkeypatch)
    with pytest.raises(cli.UsageError, match=r"invalid tensor layout \(2, 2\) / \(-1, 1\)"):
        pretrained.read_state_dict(str(path))


@pytest.mark.parametrize("name, kind", [("reference_zip", "zip archive"), ("reference_legacy", "file")])
def test_a_truncated_file_is_one_line(tmp_path, name, kind):
    data = (FIXTURES / f"{name}.pth").read_bytes()
    for cut in (40, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(cli.UsageError) as error:
            pretrained.load_generator(str(path))
        message = str(error.value)
        assert message.startswith(f"{path}: truncated or damaged PyTorch {kind} (") and "\n" not in message


def test_files_that_are_no_torch_generator_are_one_line_naming_what_does_not_fit(scripts, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    keras_file = tmp_path / "model.pth"
    networks.build_generator(4, 1, "transpose", 0.02).save(tmp_path / "model.keras")
    os.replace(tmp_path / "model.keras", keras_file)
    discriminator = FIXTURES / "discriminator_zip.pth"
    cases = {
        text: "not a PyTorch .pth file (neither a torch.save zip archive nor its legacy format)",
        keras_file: "a zip archive without a torch.save data.pkl (not a PyTorch .pth file)",
        discriminator: ("tensor '0.weight' float32 (2, 3, 4, 4) does not fit a CycleGAN ResnetGenerator: expected "
                        "the first 7x7 convolution's weight (ngf, 3, 7, 7) there"),
        tmp_path / "missing.pth": "no such file (expected a PyTorch .pth generator)",
    }
    for path, expected in cases.items():
        with pytest.raises(cli.UsageError) as error:
            pretrained.load_generator(str(path))
        assert str(error.value) == f"{path}: {expected}"
    result = scripts.run("convert.py", discriminator, tmp_path / "d.keras")
    assert one_line_error(result, "convert.py") == f"convert.py: error: {discriminator}: {cases[discriminator]}"


def test_every_tensor_is_used_once_and_in_place():
    tensors = pretrained.read_state_dict(str(FIXTURES / "fork_legacy.pth"))
    names = list(tensors)
    shorter = collections.OrderedDict((name, tensors[name]) for name in names[:-1])
    with pytest.raises(cli.UsageError, match=r"^f: not a whole CycleGAN ResnetGenerator, its tensors end after "
                                             r"'module\.head\.1\.weight'; expected out's convolution bias \(3\) next$"):
        pretrained.generator_weights("f", shorter)
    longer = collections.OrderedDict(tensors, extra=np.zeros(3, np.float32))
    with pytest.raises(cli.UsageError, match=r"^f: tensor 'extra' \(3\) is left over after the generator's last "
                                             r"convolution"):
        pretrained.generator_weights("f", longer)
    swapped = collections.OrderedDict((name, tensors[name]) for name in names[:4] + [names[5], names[4]] + names[6:])
    with pytest.raises(cli.UsageError, match=r"^f: tensor 'module\.encoder\.0\.bias' float32 \(6\) does not fit a "
                                             r"CycleGAN ResnetGenerator: expected down1's convolution weight "
                                             r"\(6, 3, 3, 3\) there$"):
        pretrained.generator_weights("f", swapped)


def test_convert_writes_a_keras_generator_and_never_over_a_file(scripts, tmp_path):
    target = tmp_path / "models" / "h2z.keras"
    result = scripts.run("convert.py", FIXTURES / "reference_legacy.pth", target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"saved {target}: resnet generator, ngf 4, 2 residual blocks"
    converted = inference.load_generator(str(target))
    np.testing.assert_allclose(converted.predict_on_batch(EXPECTED["input"]), EXPECTED["reference_legacy"],
                               atol=1e-4)
    before = target.read_bytes()
    again = scripts.run("convert.py", FIXTURES / "fork_zip.pth", target)
    assert one_line_error(again, "convert.py") == \
        f"convert.py: error: {target}: already exists; pass --overwrite to replace it"
    assert target.read_bytes() == before and os.listdir(target.parent) == ["h2z.keras"]
    keras_source = scripts.run("convert.py", target, tmp_path / "copy.keras")
    assert one_line_error(keras_source, "convert.py") == (f"convert.py: error: {target}: expected a PyTorch "
                                                          "generator (.pth); a .keras file needs no converting")
    help_text = scripts.run("convert.py", "--help")
    assert help_text.returncode == 0 and "--overwrite" in help_text.stdout


def test_generate_translates_with_a_pth_and_no_reverse_generator(scripts, tmp_path):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(20, 24))
    result = scripts.run("generate.py", "--generator", FIXTURES / "fork_zip.pth", "--input", "photos",
                         "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "translated 2 images" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["out", "photos"]  # no grid without a reverse generator
    generator = pretrained.load_generator(str(FIXTURES / "fork_zip.pth"))
    for name in ("img000.png", "img001.png"):
        image = iio.imread(photos / name).astype(np.float32) / 127.5 - 1
        expected = inference.translate_images(generator, [image])[0]
        written = iio.imread(tmp_path / "out" / name).astype(np.float32) / 127.5 - 1
        assert written.shape == (20, 24, 3)
        assert np.abs(written - expected).max() < 2.5 / 127.5  # 8-bit rounding


def test_a_file_of_another_kind_given_as_the_generator_is_one_whole_line(scripts, tmp_path):
    """An image passed as --generator: named by its kind, not Keras' paragraph cut off mid-word."""
    photos = tmp_path / "photos"
    write_images(str(photos), 1, size=(20, 24))
    result = scripts.run("generate.py", "--generator", "photos/img000.png", "--input", "photos", "--output", "out",
                         cwd=tmp_path)
    assert one_line_error(result, "generate.py") == \
        "generate.py: error: photos/img000.png: not a generator file (expected a .keras model or a PyTorch .pth)"
    assert sorted(os.listdir(tmp_path)) == ["photos"]
    sentence = "A sentence of Keras' that goes on and on. "
    for text, expected in ((sentence * 10, (sentence * 4).strip()), ("word " * 60, "word " * 39 + "word ..."),
                           ("a short first line. And more\nsecond line", "a short first line. And more")):
        assert inference.brief(text) == expected


@pytest.mark.slow
def test_a_fresh_run_starts_from_a_pth_and_a_keras_file(dataset, tmp_path):
    """With --lr 0 the one training step changes nothing: the run's final generators are the files'."""
    source_ab = FIXTURES / "reference_zip.pth"
    source_ba = tmp_path / "reference.keras"
    pretrained.load_generator(str(FIXTURES / "reference_legacy.pth")).save(source_ba)
    train.main(["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "tuned", *TINY,
                "--n-res-blocks", "2", "--max-steps", "1", "--lr", "0", "--start-ab", str(source_ab),
                "--start-ba", str(source_ba), "--sample-every", "100"])
    for run_file, source in (("generator_ab.keras", source_ab), ("generator_ba.keras", source_ba)):
        trained = inference.load_generator(str(tmp_path / "runs" / "tuned" / run_file)).get_weights()
        expected = pretrained.load_generator(str(source)).get_weights()
        assert len(trained) == len(expected) == 2 * 10 + 2 * 9  # kernel + bias per conv, gamma + beta per norm
        for got, want in zip(trained, expected):
            np.testing.assert_array_equal(got, want)


def test_a_start_file_of_another_network_is_one_line_naming_the_option(dataset, tmp_path):
    with pytest.raises(cli.UsageError) as error:
        train.main(["--dataroot", dataset, "--runs-root", str(tmp_path), "--name", "wrong", *TINY, "--max-steps", "1",
                    "--start-ab", str(FIXTURES / "reference_zip.pth")])
    assert str(error.value) == (f"--start-ab {FIXTURES / 'reference_zip.pth'}: holds a generator with n_res_blocks 2, "
                                "this run has --n-res-blocks 1 (give --n-res-blocks 2 to start from it)")
    assert not (tmp_path / "wrong").exists()  # refused before the run folder is made: the name stays free
    source = str(FIXTURES / "reference_legacy.pth")
    for generator, expected in ((networks.build_generator(8, 2, "transpose", 0.02), "ngf 4, this run has --ngf 8"),
                                (networks.build_generator(4, 2, "resize", 0.02),
                                 "upsample transpose, this run has --upsample resize"),
                                (networks.build_unet_generator(4, 0.02), "netg resnet, this run has --netg unet")):
        with pytest.raises(cli.UsageError, match=f"^--start-ba {source}: holds a generator with {expected} "):
            pretrained.start_from(source, generator, "--start-ba")
    discriminator = tmp_path / "discriminator.keras"
    networks.build_discriminator(8, "patch70", False, 0.02, "discriminator_b").save(discriminator)
    with pytest.raises(cli.UsageError) as error:
        pretrained.start_from(str(discriminator), generator, "--start-ab")
    assert str(error.value) == (f"--start-ab {discriminator}: holds no CycleGAN generator (a model "
                                "'discriminator_b' without the layers of networks.py's generators)")


def test_evaluation_json_dates_the_generators_that_were_scored(dataset, tmp_path, monkeypatch):
    """evaluate.py reads generator files that train.py may write anew meanwhile: one replaced while it loads
    is loaded again, and evaluation.json dates the files loaded, not those there after the scoring."""
    import evaluate
    import metrics
    from test_evaluate import make_run, tiny_features

    monkeypatch.setattr(metrics, "load_inception", lambda: (tiny_features, None))
    run_dir = make_run(tmp_path / "run", dataset)
    ab, ba = (os.path.join(run_dir, f"generator_{d}.keras") for d in ("ab", "ba"))
    load, score, loaded = evaluate.inference.load_generator, metrics.Evaluator.score, []

    def load_while_written(path):  # train.py writes generator_ab.keras anew while it is first loaded
        loaded.append(path)
        model = load(path)
        if loaded == [ab]:
            os.utime(ab, (1e9, 1e9))
        return model

    def score_while_written(*args):  # and again while it is scored
        os.utime(ab, (2e9, 2e9))
        return score(*args)
    monkeypatch.setattr(evaluate.inference, "load_generator", load_while_written)
    monkeypatch.setattr(metrics.Evaluator, "score", score_while_written)
    evaluate.main(["--run-dir", run_dir, "--classifier", str(tmp_path / "cls.keras")])
    assert loaded[:3] == [ab, ab, ba] and os.path.getmtime(ab) == 2e9  # then the classifier
    when = lambda seconds: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))  # noqa: E731
    assert json.load(open(os.path.join(run_dir, "evaluation.json")))["generators"] == {
        ab: when(1e9), ba: when(os.path.getmtime(ba))}
