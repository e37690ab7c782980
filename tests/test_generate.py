import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import data
import generate
from conftest import write_images
import networks
import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_outputs_keep_names_and_full_resolution_and_a_grid_is_drawn(trained_run, tmp_path):
    inputs = tmp_path / "in"
    write_images(str(inputs), 1, size=(37, 61), seed=1)
    write_images(str(inputs / "x"), 0)
    iio.imwrite(inputs / "gray.jpg", np.tile(np.arange(50, dtype=np.uint8) * 4, (44, 1)))
    iio.imwrite(inputs / "wide.bmp", np.zeros((20, 90, 3), np.uint8))
    (inputs / "readme.txt").write_text("not an image")
    output = tmp_path / "out"
    written, grid = generate.generate(generate.build_parser().parse_args(
        ["--run-dir", trained_run, "--direction", "BtoA", "--input", str(inputs), "--output", str(output)]))
    assert sorted(os.listdir(output)) == ["gray.jpg", "img000.png", "wide.bmp"]
    assert iio.imread(output / "img000.png").shape == (37, 61, 3)
    assert iio.imread(output / "gray.jpg").shape == (44, 50, 3)
    assert iio.imread(output / "wide.bmp").shape == (20, 90, 3)
    assert grid == str(output) + "_grid.png"
    picture = iio.imread(grid)
    assert picture.shape[:2] == (3 * 300, 3 * 300)  # 3 images x (input | translated | reconstructed)


def test_translation_matches_the_generator_on_the_padded_image(trained_run):
    generator = networks.load_generator(os.path.join(trained_run, "generator_ab.keras"))
    image = np.random.default_rng(0).uniform(-1, 1, (30, 42, 3)).astype("float32")
    padded, _ = networks.pad_to_multiple(image)
    assert padded.shape == (32, 44, 3)
    expected = generator.predict_on_batch(padded[None])[0, :30, :42]
    same_size = np.random.default_rng(1).uniform(-1, 1, (30, 42, 3)).astype("float32")
    results = networks.translate_images(generator, [image, same_size, image[:28, :40]], batch_size=2)
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    assert [r.shape for r in results] == [(30, 42, 3), (30, 42, 3), (28, 40, 3)]


def test_default_input_and_output_come_from_the_run(trained_run, dataset):
    args = generate.resolve(generate.build_parser().parse_args(["--run-dir", trained_run]))
    assert args.input == os.path.join(dataset, "testA")
    assert args.output == os.path.join(trained_run, "generated", "AtoB")
    assert args.generator.endswith("generator_ab.keras") and args.reverse_generator.endswith("generator_ba.keras")


def test_explicit_model_files_work_without_a_run(trained_run, dataset, tmp_path):
    written, grid = generate.generate(generate.build_parser().parse_args(
        ["--generator", os.path.join(trained_run, "generator_ab.keras"),
         "--input", os.path.join(dataset, "testA"), "--output", str(tmp_path / "o")]))
    assert len(written) == 3 and grid is None


def test_not_a_model_file_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "fake.keras"
    bogus.write_bytes(b"PK not really a zip")
    with pytest.raises(cli.UsageError, match="fake.keras: not a Keras model file"):
        networks.load_generator(str(bogus))
    with pytest.raises(cli.UsageError, match="no such model file"):
        networks.load_generator(str(tmp_path / "missing.keras"))


def test_missing_run_directory_exits_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "generate.py"), "--run-dir", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"generate.py: error: --run-dir {tmp_path / 'nope'}: no such folder (a run made by train.py)"


def test_unknown_direction_is_refused(capsys):
    with pytest.raises(SystemExit):
        generate.build_parser().parse_args(["--run-dir", "x", "--direction", "AtoC"])
    assert "invalid choice: 'AtoC'" in capsys.readouterr().err
