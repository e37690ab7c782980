"""A run folder, RUNS_ROOT/NAME/: what it holds, who may write it, and what may be resumed. One
train.py at a time writes a run (an flock on RUN_DIR/.lock, checkpoints.writer_lock); a fresh run starts
only in a folder that holds nothing; a resumed one reads the dataset it was trained on, recognised by
the file names it recorded (dataset.json).
"""
import json
import logging
import os

import checkpoints
import data
from cli import UsageError
from config import DATASET_FIELDS
from config import load as load_config

log = logging.getLogger("cyclegan")

LOCK_FILE = ".lock"
RUN_WRITER = ("train.py", "give another --name")  # writer_lock's `program` and `instead` for a run folder
DATASET_RECORD = "dataset.json"  # the training images' file names and sizes, by domain


def run_lock(run_dir):
    """Makes this process the only writer of RUN_DIR while the block runs: writer_lock on RUN_DIR/.lock,
    which stays (a run folder always has one)."""
    os.makedirs(run_dir, exist_ok=True)
    return checkpoints.writer_lock(os.path.join(run_dir, LOCK_FILE), run_dir, *RUN_WRITER)


def check_not_in_use(run_dir):
    """UsageError naming the PID when another process holds the run's lock; writes nothing."""
    checkpoints.check_unlocked(os.path.join(run_dir, LOCK_FILE), run_dir, *RUN_WRITER)


def remove_stale_temporaries(run_dir):
    """Removes the temporaries that write_atomically left in the run folder and its checkpoints/ when
    its process was killed; returns their paths. Call it holding the run's lock (no train.py is writing
    there then); a temporary of a process still running (evaluate.py writing beside a run) stays, and so
    does a user's file that only looks like one (a name train.py never writes)."""
    written = {"config.json", DATASET_RECORD} | {os.path.basename(checkpoints.generator_path(run_dir, name))
                                                 for name in checkpoints.GENERATORS}
    stale = checkpoints.stale_temporaries(run_dir, written) + checkpoints.stale_temporaries(
        os.path.join(run_dir, "checkpoints"), checkpoints.CHECKPOINT_NAME)
    return checkpoints.remove_temporaries(stale, "a killed run", lambda path: os.path.relpath(path, run_dir))


def check_run_dir(config, resume, chief=True):
    """Runs cannot go where a file is, nor into a run another train.py is writing; see also
    check_run_contents. Read-only: nothing is written before the checks pass. `chief`: this process
    writes the run (the other workers of a multi-worker run only read its checkpoint)."""
    for folder in (config.runs_root, config.run_dir):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: is a file, expected a folder for the runs")
    problem = checkpoints.unwritable(config.run_dir) if chief else None
    if problem:
        raise UsageError(f"{config.run_dir}: cannot write the run there ({problem}); give a --runs-root this user "
                         "can write")
    if chief:
        check_not_in_use(config.run_dir)
    check_run_contents(config, resume, chief)


def check_run_contents(config, resume, chief=True):
    """A fresh run never writes into a folder that holds anything: a run (resume it: from its newest
    checkpoint, or from step 0 when it stopped before its first) or the user's other files."""
    run_dir = config.run_dir
    held = sorted(set(os.listdir(run_dir)) - {LOCK_FILE}) if os.path.isdir(run_dir) else []
    if resume:
        check_checkpoints_kept(run_dir)
    if not chief or resume or not held:
        return
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    if "config.json" in held:
        raise UsageError(f"{run_dir} already holds a run ({shown}): continue it with --resume, "
                         "or give another --name")
    raise UsageError(f"{run_dir} holds files that are not a run of train.py ({shown}); give another --name "
                     "or --runs-root, or move them away")


def check_checkpoints_kept(run_dir):
    """--resume starts a run again from step 0 only when it never wrote a checkpoint: one whose checkpoints/
    is a file, or gone while the final generators (written after a checkpoint) are there, would be trained
    again over them. One line naming what is there and the way on; nothing written."""
    folder = os.path.join(run_dir, "checkpoints")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{folder}: is a file, expected the run's folder of checkpoints; move the file away, "
                         "or put the run's checkpoints/ back")
    generators = [path for path in (checkpoints.generator_path(run_dir, name) for name in checkpoints.GENERATORS)
                  if os.path.exists(path)]
    if generators and not checkpoints.checkpoint_paths(run_dir):
        raise UsageError(f"{run_dir}: has no checkpoint to resume from, yet holds its trained "
                         f"{' and '.join(map(os.path.basename, generators))} (resuming would train it again from "
                         "step 0 over them); put its checkpoints/ back, or fine-tune them in a new run: --start-ab "
                         "and --start-ba with these files, under another --name")


def check_run_dataset(config):
    """On --resume, before anything is read: a dataset folder the run was trained on that is gone is one
    line saying how to point the run at its new place (never a lookup relative to here)."""
    saved = load_config(os.path.join(config.run_dir, "config.json"))
    for name in DATASET_FIELDS:
        folder = getattr(config, name)
        if folder and folder == getattr(saved, name) and not os.path.isdir(folder):
            raise UsageError(f"{folder}: the dataset folder of {config.run_dir} is gone (config.json's {name}); "
                             f"if it moved, resume with --{name.replace('_', '-')} NEW_FOLDER (it must hold the "
                             "images the run was trained on)")
    return saved


def check_same_images(config, saved, train_paths):
    """A resumed run pointed at another dataset folder reads it only when its training domains hold
    the files the run was trained on, names and sizes (RUN_DIR/dataset.json); otherwise one line says what
    differs."""
    moved = [name for name in DATASET_FIELDS if getattr(config, name) != getattr(saved, name)]
    if not moved:
        return
    given = " ".join(f"--{name.replace('_', '-')} {getattr(config, name)}" for name in moved)
    try:
        with open(os.path.join(config.run_dir, DATASET_RECORD)) as f:
            recorded = {domain: {(name, size) for name, size in files} for domain, files in json.load(f).items()}
    except (OSError, ValueError, TypeError, AttributeError):  # none, or not [name, size] pairs by domain
        log.warning("%s: no record of the run's images (%s), so the new folder is taken unchecked", given,
                    DATASET_RECORD)
        return
    for domain, images in zip("AB", train_paths):
        found, known = {tuple(file) for file in data.image_files(images)}, recorded.get(domain, set())
        if found != known:
            missing, new = sorted(name for name, _ in known - found), sorted(name for name, _ in found - known)
            raise UsageError(f"{given}: domain {domain}'s training images differ from those the run was trained on "
                             f"({len(missing)} of its {len(known)} missing or changed"
                             f"{', e.g. ' + missing[0] if missing else ''}; {len(new)} it never saw"
                             f"{', e.g. ' + new[0] if new else ''}); resume with the folder the run was trained on")
    log.info("resuming on the run's images in their new place: %s", given)


def record_dataset(run_dir, train_paths):
    """dataset.json, once: the training images' file names and sizes by domain (check_same_images reads them)."""
    path = os.path.join(run_dir, DATASET_RECORD)
    if not os.path.exists(path):
        checkpoints.write_json(path, {domain: data.image_files(images) for domain, images in zip("AB", train_paths)})
