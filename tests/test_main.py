import os

import keras
import numpy as np

import data
import main


def test_demo_runs_end_to_end_through_the_same_code(tmp_path, capsys):
    scores = main.main(["--dataroot", str(tmp_path / "demo"), "--runs-root", str(tmp_path / "runs"),
                        "--max-steps", "2"])
    run_dir = tmp_path / "runs" / "demo"
    out = capsys.readouterr().out
    for path in ("generator_ab.keras", "checkpoints/step-000000002.npz", "generated/AtoB_grid.png", "config.json"):
        assert (run_dir / path).exists() and str(run_dir) in out
    assert len(data.list_images(run_dir / "generated" / "AtoB")) == len(os.listdir(tmp_path / "demo" / "testA"))
    assert "do-nothing baseline" in out and f"{scores['baseline']['ssim']:6.3f}" in out
    assert 0 < scores["baseline"]["ssim"] < 0.8 and 5 < scores["baseline"]["psnr"] < 30


def test_a_second_demo_run_gets_its_own_name(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-2").mkdir()
    assert main.free_run_name(str(tmp_path), "demo") == "demo-3"
    assert main.free_run_name(str(tmp_path), "other") == "other"


def test_ground_truth_scores_of_a_perfect_and_a_do_nothing_generator(tmp_path):
    from conftest import write_images
    truths = tmp_path / "gt"
    write_images(str(truths), 3, size=(24, 24), seed=4)
    inputs = tmp_path / "in"
    write_images(str(inputs), 3, size=(24, 24), seed=5)
    identity = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Identity()])
    identity.save(tmp_path / "identity.keras")
    against_itself = main.ground_truth_scores(str(tmp_path / "identity.keras"), str(truths), str(truths))
    assert against_itself["generator"] == against_itself["baseline"]
    assert np.isclose(against_itself["generator"]["ssim"], 1.0) and against_itself["generator"]["psnr"] == 100.0
    unrelated = main.ground_truth_scores(str(tmp_path / "identity.keras"), str(inputs), str(truths))
    assert unrelated["generator"]["ssim"] < 0.9 and unrelated["generator"]["psnr"] < 30
