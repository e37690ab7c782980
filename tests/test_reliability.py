"""Crash-safe training, tried for real: a killed process, signals, damaged checkpoints, a diverging
loss, two writers of one run (bad input is test_bad_input.py's).

The training runs are real train.py processes on a tiny dataset; the checks that need no separate
process call main() in this one (each process start costs seconds of imports). The processes run
beside those checks: the run to be killed starts with the module (and a copy resumed with a
diverging --lr once it is killed), and the checks of them come after the ones that need no killed
run; the copy to be stopped by SIGTERM starts with the first of them, and is checked last."""
import json
import logging
import os
from pathlib import Path
import re
import shutil
import signal
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import checkpoints
from config import Config
from config import load as config_load
import runs
import train

from conftest import PATIENCE, TINY, cli_error, make_dataset, newest_step, output, runs_slow_tests, start, wait_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 images a domain (4 steps an epoch), plus a corrupt one that training must skip."""
    root = tmp_path_factory.mktemp("tiny")
    make_dataset(root, counts=(4, 4, 4, 4), size=(36, 36))
    (root / "trainA" / "broken.png").write_bytes(b"this is not a PNG")
    return root


def file_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


def copy_run(killed, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(killed.root, root)
    return root, root / "run", Path(checkpoints.checkpoint_paths(root / "run")[-1])


@pytest.fixture(scope="module", autouse=True)
def run_to_kill(request, dataset, tmp_path_factory):
    """Started with the module, by a thread, so that its processes run beside the tests that need no
    killed run (a train.py process takes seconds to reach its first checkpoint): a run SIGKILLed right
    after its first checkpoint, then two copies of it, one resumed at once with a diverging --lr (it
    ends by itself). killed_run waits for the thread and resumes the other copy."""
    if not runs_slow_tests(request, __name__):  # the quick tier: no test here needs it
        yield None
        return
    root = tmp_path_factory.mktemp("killed")
    folders = {name: tmp_path_factory.mktemp(name) for name in ("killed_logs", "resumed", "resumed_logs",
                                                                 "diverging", "diverging_logs")}
    killed = SimpleNamespace(root=root, folders=folders, error=None, resumed=None, diverging=None)
    killed.process = start("train.py", ["--dataroot", dataset, "--runs-root", root, "--name", "run", *TINY,
                                        "--epochs", 1000, "--epochs-decay", 0, "--save-every", 1, "--seed", 0],
                           folders["killed_logs"])

    def kill_then_copy():
        try:
            wait_for(lambda: checkpoints.checkpoint_paths(root / "run"), killed.process)
            killed.process.send_signal(signal.SIGKILL)
            killed.process.wait()
            # A kill during the next checkpoint's write leaves its temporary (resume removes such files;
            # the tests below plant their own). Gone here, every test starts from a run killed between writes.
            for temporary in (root / "run").rglob(f"*.tmp{killed.process.pid}.*"):
                temporary.unlink()
            killed.step = newest_step(root / "run")
            for name in ("resumed", "diverging"):
                copy = copy_run(killed, folders[name])[0]
                setattr(killed, f"{name}_root", copy)
                setattr(killed, f"{name}_checkpoints", file_bytes(copy / "run" / "checkpoints"))
            killed.diverging = start("train.py", ["--runs-root", killed.diverging_root, "--name", "run", "--resume",
                                                  "--lr", "1e30"], folders["diverging_logs"])
        except BaseException as error:  # noqa: BLE001  (raised again by killed_run, in the test)
            killed.error = error

    thread = threading.Thread(target=kill_then_copy, daemon=True)
    thread.start()
    yield killed, thread
    thread.join()
    for process in (killed.process, killed.resumed, killed.diverging):
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def killed_run(run_to_kill):
    """run_to_kill's run, once its thread is done, and its other copy resumed now at another --image-size
    (to be stopped with SIGTERM): the tests of the killed run and of bad input run beside its start, and
    only then the tests that need it (it trains until it is stopped)."""
    killed, thread = run_to_kill
    thread.join()
    if killed.error:
        raise killed.error
    killed.resumed = start("train.py", ["--runs-root", killed.resumed_root, "--name", "run", "--resume",
                                        "--image-size", "48"], killed.folders["resumed_logs"])
    return killed


# ---- what needs no killed run, while run_to_kill's processes start -------------------------

def test_the_first_sigint_or_sigterm_is_a_stop_request_and_the_second_acts_as_usual():
    """The second signal goes to the handler that was there before, whichever it is: here one that
    records it, then Python's own for SIGINT (KeyboardInterrupt), set explicitly so that the test does
    not depend on what earlier tests of this process left installed."""
    received = []
    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(number, lambda received_number, frame: received.append(received_number))
        usual = signal.getsignal(number)
        try:
            with train.GracefulStop() as stop:
                signal.raise_signal(number)
                assert stop.signal_name == signal.Signals(number).name and not received
                assert signal.getsignal(number) is usual
                signal.raise_signal(number)
                assert received == [number]
            assert signal.getsignal(number) is usual
        finally:
            signal.signal(number, previous)
            received.clear()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with train.GracefulStop(), pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_without_test_folders_the_training_folders_are_read_and_a_failing_evaluation_or_grid_is_a_warning(
        tmp_path, monkeypatch, caplog):
    """No test folders (testA/ gone, testB/ empty): sample grids and --eval-every read the training
    folders, said once in an INFO line per domain, and never a warning for it. With an evaluation and a
    sample grid made to fail once (as a singular covariance or a full disk would), each is one WARNING,
    the epoch's checkpoint is on disk before its evaluation starts, and the run ends as usual. (One
    image in trainB: too few for the Fréchet distances, so no InceptionV3 is looked for.)"""
    import metrics
    import samples
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    dataroot = make_dataset(tmp_path / "data", counts=(2, 1, 0, 0), size=(36, 36))
    shutil.rmtree(tmp_path / "data" / "testA")
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)  # an empty folder is fine for a fresh run
    evaluated, evaluate = [], metrics.Evaluator.log_to_tensorboard
    drawn, draw = [], samples.grid_image

    def evaluation_failing_once(self, writer, generators, step):
        evaluated.append((step, checkpoints.checkpoint_paths(run_dir)[-1]))
        if len(evaluated) == 1:
            raise np.linalg.LinAlgError("Singular matrix")
        return evaluate(self, writer, generators, step)

    def sample_grid_failing_once(*args):
        drawn.append(args)
        if len(drawn) == 1:
            raise OSError(28, "No space left on device")
        return draw(*args)

    monkeypatch.setattr(metrics.Evaluator, "log_to_tensorboard", evaluation_failing_once)
    monkeypatch.setattr(samples, "grid_image", sample_grid_failing_once)
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--dataroot", dataroot, "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY, "--epochs",
                "2", "--epochs-decay", "0", "--save-every", "1", "--eval-every", "1", "--sample-every", "1"])

    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("no test folder")] == [
        f"no test folder for domain {d} ({tmp_path / 'data' / ('test' + d)} {why}): sample grids and evaluation "
        f"read the training folder {tmp_path / 'data' / ('train' + d)}" for d, why in (("A", "is missing"),
                                                                                      ("B", "holds no images"))]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "step 1: sample grids not written (OSError: [Errno 28] No space left on device)",
        "step 2: evaluation skipped (LinAlgError: Singular matrix)"]
    assert [(step, Path(path).name) for step, path in evaluated] == [(2, "step-000000002.npz"),
                                                                     (4, "step-000000004.npz")]
    assert [Path(p).name for p in checkpoints.checkpoint_paths(run_dir)] == ["step-000000002.npz", "step-000000004.npz"]
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert [e.step for e in accumulator.Tensors("eval/domain_AtoB")] == [4]
    assert [e.step for e in accumulator.Tensors("samples/AtoB")] == [2, 3, 4]
    assert (run_dir / "generator_ab.keras").is_file()
    runs.check_not_in_use(run_dir)  # the lock went with the end of the run


def test_a_full_disk_under_a_sample_grid_is_one_warning_and_no_traceback(tmp_path, monkeypatch, caplog, capfd):
    """The grid is encoded in memory and written by write_atomically: no imageio file object dies on the
    full disk (its __del__ printed "Exception ignored ... OSError" beside the WARNING). The temporary of
    the first grid is /dev/full, which takes no byte."""
    import gc
    import sys

    import cyclegan
    import distribute

    gan = cyclegan.build_gan(Config(image_size=32, ngf=4, ndf=8, n_res_blocks=1), distribute.make_strategy("none"))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / f"AtoB_step0000001.tmp{os.getpid()}.png").symlink_to("/dev/full")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    images = np.zeros((1, 32, 32, 3), np.float32)
    writer = train.tf.summary.create_file_writer(str(tmp_path / "events"))
    caplog.set_level(logging.INFO, logger="cyclegan")
    assert train.try_samples(str(tmp_path), writer, gan, {"A": images, "B": images}, 1) is None
    gc.collect()
    assert unraisable == [] and "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "step 1: sample grids not written (OSError: [Errno 28] No space left on device: "
        f"'{tmp_path / 'samples' / 'AtoB_step0000001.png'}')"]
    assert os.listdir(tmp_path / "samples") == []


# ---- a killed run ----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_leaves_a_complete_checkpoint_that_resume_restores_exactly(killed_run, tmp_path, caplog, capsys):
    assert killed_run.process.returncode == -signal.SIGKILL
    assert re.search(r"skipping \S+broken\.png: not a readable image", output(killed_run.process)[1])
    root, run_dir, latest = copy_run(killed_run, tmp_path)
    with np.load(latest) as arrays:
        saved = {key: arrays[key] for key in arrays.files}
    assert int(saved["step"]) == killed_run.step > 0
    dead = killed_run.process.pid  # write_atomically's temporaries of killed writers, and of a live one
    stale = [latest.parent / f"step-999999999.tmp{dead}.npz", run_dir / f"config.tmp{dead}.json"]
    live = run_dir / f"evaluation.tmp{os.getppid()}.json"
    for path in stale + [live]:
        path.write_bytes(b"half a file, cut by a kill")

    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--runs-root", str(root), "--name", "run", "--resume", "--max-steps", str(killed_run.step)])

    assert f"resumed {latest} at step {killed_run.step}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "checkpoint" in r.getMessage()]
    assert f"removed 2 temporary file(s) left by a killed run: {stale[1].name}, checkpoints/{stale[0].name}" \
        in caplog.text
    assert not any(path.exists() for path in stale) and live.exists()
    assert f"nothing to train: {run_dir} is at step {killed_run.step}" in capsys.readouterr().out
    # what a resume restores, saved again from the restored state: weights, optimizers, pools, rng
    gan = train.cyclegan.build_gan(config_load(run_dir / "config.json"), train.distribute.make_strategy("none"))
    pools = {d: train.cyclegan.HistoryPool(50, np.random.default_rng()) for d in "AB"}
    rng = np.random.default_rng()
    assert checkpoints.load_checkpoint(str(latest), gan, pools, rng) == (killed_run.step, int(saved["epoch"]))
    again = checkpoints.save_checkpoint(str(tmp_path / "again"), gan, killed_run.step, int(saved["epoch"]), pools, rng)
    with np.load(again) as arrays:
        assert sorted(arrays.files) == sorted(saved)
        for key, value in saved.items():
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)


@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(killed_run, tmp_path, caplog):
    root, run_dir, previous = copy_run(killed_run, tmp_path)
    corrupt = previous.parent / f"step-{killed_run.step + 4:09d}.npz"
    corrupt.write_bytes(previous.read_bytes()[: previous.stat().st_size // 2])

    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--runs-root", str(root), "--name", "run", "--resume", "--max-steps", str(killed_run.step)])

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith(f"{corrupt}: unreadable checkpoint") and "previous" in m for m in warnings), warnings
    assert f"resumed {previous} at step {killed_run.step}" in caplog.text
    assert not corrupt.exists() and Path(f"{corrupt}.corrupt").exists()


@pytest.mark.slow
def test_resume_refuses_when_no_checkpoint_is_loadable(killed_run, tmp_path):
    root, run_dir, _ = copy_run(killed_run, tmp_path)
    for path in checkpoints.checkpoint_paths(run_dir):
        Path(path).write_bytes(b"PK\x03\x04 damaged beyond repair")
    before = file_bytes(run_dir / "checkpoints"), (run_dir / "config.json").read_bytes()
    message = cli_error(train.main, ["--runs-root", str(root), "--name", "run", "--resume", "--lr", "0.001"])
    assert "no loadable checkpoint to resume from, nothing changed" in message
    assert (file_bytes(run_dir / "checkpoints"), (run_dir / "config.json").read_bytes()) == before


@pytest.mark.parametrize("change, difference", [
    (dict(ngf=8), "(weight shape (7, 7, 3, 4), expected (7, 7, 3, 8))"),
    (dict(n_res_blocks=2), "(30 weight arrays, expected 38)"),
])
@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_network_sizes(killed_run, tmp_path, change, difference):
    """As if the checkpoint came from another run: config.json says one size, the weights another."""
    root, run_dir, latest = copy_run(killed_run, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(dict(config, **change)))
    before = file_bytes(run_dir / "checkpoints")
    message = cli_error(train.main, ["--runs-root", str(root), "--name", "run", "--resume"])
    assert f"{latest}: its generator_ab does not fit the configured network {difference}" in message
    assert file_bytes(run_dir / "checkpoints") == before


# ---- the copies resumed from the killed run, while they train --------------------------------

@pytest.mark.slow
def test_a_second_writer_of_a_run_in_progress_gets_one_line_and_writes_nothing(killed_run, dataset):
    """While the resumed copy trains, a second --resume and a fresh run of the same name both end at once.
    They are train.main calls of this process: another process than the writer, as a second train.py is."""
    writer, run_dir = killed_run.resumed, killed_run.resumed_root / "run"
    wait_for(lambda: (run_dir / ".lock").read_text().strip() == str(writer.pid), writer)
    for args in (["--resume"], ["--dataroot", str(dataset), *TINY]):
        assert cli_error(train.main, ["--runs-root", str(killed_run.resumed_root), "--name", "run", *args,
                                      "--lr", "0.001"]) == (
            f"train.py: error: {run_dir} is in use by another train.py (PID {writer.pid}); wait for it to end, "
            "or give another --name")
    assert writer.poll() is None
    # what write_atomically would have left of this process: NAME.tmpPID.EXT
    written_by_others = [p for p in run_dir.rglob("*") if re.search(rf"\.tmp{os.getpid()}(\.|$)", p.name)]
    assert not written_by_others
    assert json.loads((run_dir / "config.json").read_text())["lr"] == Config.lr


@pytest.fixture(scope="module")
def stopped_resume(killed_run):
    """The resumed copy, sent SIGTERM once it has written a checkpoint of its own: its exit status,
    stdout and stderr."""
    process, run_dir = killed_run.resumed, killed_run.resumed_root / "run"
    wait_for(lambda: newest_step(run_dir) > killed_run.step, process)
    process.send_signal(signal.SIGTERM)
    return (process.wait(timeout=PATIENCE), *output(process))


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(killed_run, stopped_resume):
    run_dir = killed_run.resumed_root / "run"
    latest = run_dir / "checkpoints" / f"step-{killed_run.step:09d}.npz"
    returncode, stdout, stderr = stopped_resume
    assert returncode == 0

    assert f"resumed {latest} at step {killed_run.step}" in stderr
    stopped_at = int(re.search(r"stopped by SIGTERM at step (\d+); continue with: .* --resume", stdout).group(1))
    assert stopped_at > killed_run.step
    checkpoint = checkpoints.checkpoint_paths(run_dir)[-1]
    assert checkpoint.endswith(f"step-{stopped_at:09d}.npz") and f"checkpoint:   {checkpoint}" in stdout
    with np.load(checkpoint) as arrays:
        assert int(arrays["step"]) == stopped_at
        assert np.isfinite(arrays["weights/generator_ab/0"]).all()
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_resume_with_another_image_size_empties_the_history_pools(killed_run, stopped_resume, dataset):
    """The resumed copy runs at --image-size 48, the killed run at 32: the pools hold fakes of the old
    size, so they start again (one WARNING), and config.json says the new size once the resumed run has
    trained."""
    with np.load(checkpoints.checkpoint_paths(killed_run.root / "run")[-1]) as arrays:
        assert arrays["pool/A"].shape[1:] == (32, 32, 3)
    stderr, run_dir = stopped_resume[2], killed_run.resumed_root / "run"
    # besides the broken image (named once a process) and SIGTERM's line when it came between two steps
    assert [line for line in stderr.splitlines() if line.startswith("WARNING: ") and "SIGTERM" not in line] == [
        f"WARNING: skipping {dataset / 'trainA' / 'broken.png'}: not a readable image",
        "WARNING: --image-size 48: emptied the history pools of 32-px fakes from before the change"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_size"] == 48
    with np.load(checkpoints.checkpoint_paths(run_dir)[-1]) as arrays:
        trained = int(arrays["step"]) - killed_run.step  # each step adds one fake of the new size
        assert trained > 0 and arrays["pool/A"].shape == (min(trained, config["pool_size"]), 48, 48, 3)


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(killed_run):
    process = killed_run.diverging
    assert process.wait(timeout=PATIENCE) == 1
    stderr = output(process)[1]
    last_line = stderr.strip().splitlines()[-1]
    match = re.fullmatch(r"train\.py: error: step (\d+): non-finite loss \((.*nan.*)\); stopped without saving, "
                         r"last good checkpoint: (\S+) \(try a lower --lr\)", last_line)
    assert match, last_line
    assert int(match.group(1)) > killed_run.step
    assert match.group(3) == checkpoints.checkpoint_paths(killed_run.diverging_root / "run")[-1]
    assert file_bytes(killed_run.diverging_root / "run" / "checkpoints") == killed_run.diverging_checkpoints
    assert not list((killed_run.diverging_root / "run").glob("*.keras"))
    assert "Traceback" not in stderr


def test_a_write_that_fails_deep_in_a_library_names_its_file_and_leaves_no_temporary(tmp_path):
    """A full disk inside Keras' or a converter's writer raises an OSError naming no file: the one line
    run_cli prints must name it."""
    def full_disk(temporary):
        Path(temporary).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as error:
        checkpoints.write_atomically(str(tmp_path / "c.keras"), full_disk)
    assert (error.value.errno, error.value.filename) == (28, str(tmp_path / "c.keras"))
    assert str(error.value) == f"[Errno 28] No space left on device: '{tmp_path / 'c.keras'}'"
    assert os.listdir(tmp_path) == []


def test_temporaries_a_killed_evaluate_left_are_removed_and_others_kept(tmp_path, caplog):
    import subprocess
    import sys

    import evaluate

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    left = [run_dir / f"evaluation.tmp{dead}.json", data_dir / f"c.tmp{dead}.keras", data_dir / f"c.tmp{dead}.json"]
    kept = [run_dir / f"evaluation.tmp{os.getpid()}.json", data_dir / f"notes.tmp{dead}.keras"]  # running; a user's
    for path in left + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_text("")
    with caplog.at_level(logging.INFO, logger="cyclegan"):
        evaluate.remove_stale_temporaries(str(run_dir), str(data_dir / "c.keras"))
    assert [path.exists() for path in left + kept] == [False] * 3 + [True] * 2
    assert "removed 3 temporary file(s) left by a killed evaluate.py" in caplog.text
