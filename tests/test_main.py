from concurrent.futures import ThreadPoolExecutor
import contextlib
import logging
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest

import cli
import data
import demo_data
import main

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end_through_the_same_code(tmp_path, capsys, monkeypatch):
    """main.py's steps, the demo's network and all: build the dataset, train, translate testA/ with a grid,
    score against testA_gt/. On a smaller demo dataset (the same build, fewer crops: faster to make,
    check and translate)."""
    build = demo_data.build_demo_dataset
    monkeypatch.setattr(demo_data, "build_demo_dataset",
                        lambda root: build(root, train_per_domain=8, test_per_domain=4))
    scores = main.main(["--dataroot", str(tmp_path / "demo"), "--runs-root", str(tmp_path / "runs"),
                        "--max-steps", "2"])
    run_dir = tmp_path / "runs" / "demo"
    out = capsys.readouterr().out
    for path in ("generator_ab.keras", "checkpoints/step-000000002.npz", "generated/AtoB_grid.png", "config.json"):
        assert (run_dir / path).exists() and str(run_dir) in out
    assert len(data.list_images(run_dir / "generated" / "AtoB")) == len(os.listdir(tmp_path / "demo" / "testA"))
    assert "trained 2 steps in" in out and "building the demo dataset" in out
    assert "do-nothing baseline" in out and f"{scores['baseline']['ssim']:6.3f}" in out
    assert 0 < scores["baseline"]["ssim"] < 0.8 and 5 < scores["baseline"]["psnr"] < 30


def test_a_second_demo_run_gets_its_own_name(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo-2").mkdir()
    assert main.free_run_name(str(tmp_path), "demo") == "demo-3"
    assert main.free_run_name(str(tmp_path), "demo") == "demo-4"  # demo-3 is claimed: its folder is there
    assert main.free_run_name(str(tmp_path), "other") == "other"
    assert sorted(os.listdir(tmp_path)) == ["demo", "demo-2", "demo-3", "demo-4", "other"]
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(cli.UsageError, match=f"^--runs-root {tmp_path / 'runs'}: is a file, expected a folder"):
        main.free_run_name(str(tmp_path / "runs"), "demo")
    with pytest.raises(SystemExit):
        main.build_parser().parse_args(["--name", "../elsewhere"])


def test_a_dataroot_that_is_no_demo_dataset_is_refused_before_anything_is_said_or_built(tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("mine")
    with pytest.raises(cli.UsageError, match=f"^{notes}: exists and is not a demo dataset"):
        main.main(["--dataroot", str(notes), "--runs-root", str(tmp_path / "runs")])
    assert capsys.readouterr().out == "" and notes.read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["notes.png"]
    for option in ("--dataroot", "--runs-root"):  # empty: the working directory, not a folder of the demo's
        with pytest.raises(SystemExit):
            main.build_parser().parse_args([option, ""])
    assert capsys.readouterr().err.strip().endswith("argument --runs-root: expected a path, got an empty one")


def test_demo_runs_started_at_once_never_pick_the_same_name(tmp_path):
    """Else the second main.py would train into the first one's run, which train.py's lock refuses."""
    racers = 8
    start = threading.Barrier(racers)

    def claim(_):
        start.wait()
        return main.free_run_name(str(tmp_path / "runs"), "demo")

    with ThreadPoolExecutor(racers) as pool:
        names = list(pool.map(claim, range(racers)))
    assert sorted(names) == sorted(["demo"] + [f"demo-{n}" for n in range(2, racers + 1)])
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(names)


BUILDER = """
import sys

import demo_data

photos = demo_data._demo_photos


def photos_once_both_build():  # called past the "is it there already?" check: both build
    print("building", flush=True)
    sys.stdin.readline()
    return photos()


demo_data._demo_photos = photos_once_both_build
print(demo_data.build_demo_dataset(sys.argv[1], train_per_domain=6, test_per_domain=2))
"""


def files_of(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_two_processes_building_the_demo_dataset_at_once_both_use_one_complete_dataset(tmp_path):
    """Two main.py at once: both build, one renames its dataset into place, the other uses it."""
    root = tmp_path / "demo"
    builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(root)], cwd=REPO, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [builder.stdout.readline() for builder in builders] == ["building\n"] * 2
    for builder in builders:  # both are building now: let them go on together
        builder.stdin.write("go\n")
        builder.stdin.flush()
    results = [builder.communicate(timeout=300) for builder in builders]
    for builder, (out, err) in zip(builders, results):
        assert builder.returncode == 0 and out == f"{root}\n", err
    reference = demo_data.build_demo_dataset(str(tmp_path / "reference"), train_per_domain=6, test_per_domain=2)
    built = files_of(root)
    assert built == files_of(Path(reference)) and len(built) == 2 * 6 + 3 * 2
    assert sorted(os.listdir(tmp_path)) == ["demo", "reference"]  # no staging folder left


def test_a_staging_folder_left_by_a_killed_build_is_removed_and_a_users_folder_of_that_name_kept(tmp_path, caplog):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"demo.partial-{int(ended.stdout)}.0123abcd"
    (killed / "trainA").mkdir(parents=True)
    (killed / "trainA" / "0005.png").write_bytes(b"half an image")
    (killed / "trainB").mkdir()
    running = tmp_path / f"demo.partial-{os.getppid()}.4567cdef"  # a build of a process still running
    running.mkdir()
    users = tmp_path / f"demo.partial-{int(ended.stdout)}.89abcdef"  # a staging name, but a user's file in it
    (users / "trainA").mkdir(parents=True)
    (users / "trainA" / "thesis.txt").write_text("my work")
    with caplog.at_level(logging.INFO, logger="cyclegan"):
        root = demo_data.build_demo_dataset(str(tmp_path / "demo"), train_per_domain=4, test_per_domain=2)
    assert [record.getMessage() for record in caplog.records] == [
        f"removed 1 unfinished demo dataset(s) that killed builds left in {tmp_path}: {killed.name}"]
    assert sorted(os.listdir(tmp_path)) == sorted(["demo", running.name, users.name])
    assert (users / "trainA" / "thesis.txt").read_text() == "my work"
    assert {folder: sorted(os.listdir(os.path.join(root, folder))) for folder in demo_data.DEMO_FOLDERS} == {
        "trainA": ["0000.png", "0001.png", "0002.png", "0003.png"],
        "trainB": ["0000.png", "0001.png", "0002.png", "0003.png"],
        "testA": ["0000.png", "0001.png"], "testB": ["0000.png", "0001.png"], "testA_gt": ["0000.png", "0001.png"]}


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


def tiny_demo(tmp_path, monkeypatch):
    """main.py's command line for a demo on a small dataset and tiny networks (quick to build and train)."""
    from conftest import TINY_NETWORK

    build = demo_data.build_demo_dataset
    monkeypatch.setattr(demo_data, "build_demo_dataset",
                        lambda root: build(root, train_per_domain=4, test_per_domain=2))
    monkeypatch.setattr(main, "DEMO", main.DEMO.replace(**TINY_NETWORK, cpu_kernels="off"))
    return ["--dataroot", str(tmp_path / "demo"), "--runs-root", str(tmp_path / "runs")]


@contextlib.contextmanager
def recorded_sigint():
    """SIGINT's handler outside the demo's training: records the signal (the default would end pytest)."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_demo_stopped_before_its_first_step_says_so_and_one_that_wrote_nothing_leaves_the_name_free(
        tmp_path, capsys, monkeypatch):
    """Ctrl-C while the networks are built: no --resume to offer (no run was written); a second Ctrl-C
    there: the next demo is runs/demo again, not demo-2."""
    import cyclegan

    argv, build_gan = tiny_demo(tmp_path, monkeypatch), cyclegan.build_gan
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(cyclegan, "build_gan", lambda *args: signal.default_int_handler(signal.SIGINT, None))
        main.main(argv)
    assert os.listdir(tmp_path / "runs") == []

    def interrupted(*args):
        signal.raise_signal(signal.SIGINT)
        return build_gan(*args)

    monkeypatch.setattr(cyclegan, "build_gan", interrupted)
    with recorded_sigint() as received:
        assert main.main(argv) is None
    assert not received and capsys.readouterr().out.rstrip().endswith(
        "stopped by SIGINT at step 0; nothing trained; python main.py starts the demo again")


@pytest.mark.slow
def test_ctrl_c_ends_the_demo_after_its_step_with_a_checkpoint_and_the_command_that_continues_it(
        tmp_path, capsys, monkeypatch):
    """As train.py does: the first SIGINT finishes the step and saves it, and the demo stops there (nothing
    translated) with the command that continues it (the one train.py prints, tested there)."""
    import cyclegan
    from conftest import newest_step

    argv, steps, train_step = tiny_demo(tmp_path, monkeypatch), [], cyclegan.CycleGAN.train_step

    def interrupted_in_the_second_step(self, *args):
        steps.append(len(steps) + 1)
        if len(steps) == 2:
            signal.raise_signal(signal.SIGINT)
        return train_step(self, *args)

    monkeypatch.setattr(cyclegan.CycleGAN, "train_step", interrupted_in_the_second_step)
    with recorded_sigint() as received:
        assert main.main(argv + ["--max-steps", "40"]) is None
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "demo"
    assert steps == [1, 2] and not received and newest_step(run_dir) == 2 and not (run_dir / "generated").exists()
    assert capsys.readouterr().out.rstrip().endswith(
        f"stopped by SIGINT at step 2; continue with: python train.py --runs-root {runs} --name demo --resume")
    assert (run_dir / "config.json").exists()  # what train.py --resume reads
