"""What a run keeps on disk, written so that a crash at any instant leaves it loadable: atomic files,
checkpoints of the whole training state, and the final generators; the lock that keeps one writer on a
run folder (or on generate.py's output), and the clean-up of what a killed writer left half-written.
"""
import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import tempfile
import zipfile

import numpy as np

from cli import UsageError

log = logging.getLogger("cyclegan")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: not found (is this a run directory made by train.py?)") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: unreadable ({error})") from None


def write_atomically(path, write):
    """Calls write(temporary_path), then renames it over `path`: a reader never sees half a file."""
    base, ext = os.path.splitext(path)
    temporary = f"{base}.tmp{os.getpid()}{ext}"
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.filename is None and error.errno:  # raised deep in a library (a full disk): name the file
            raise OSError(error.errno, error.strerror, path) from error
        raise
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


TEMPORARY_NAME = re.compile(r"(?P<name>.+)\.tmp(?P<pid>\d+)(?P<ext>\.[^.]*)?")  # write_atomically's NAME.tmpPID.EXT


def unwritable(folder):
    """Why files cannot be written into `folder` (made where missing), or None: the nearest folder at or
    above it that is there is a file, or not writable (a read-only disk, no permission). A temporary file
    is the sure test (os.access passes root anywhere); nothing stays, and no folder is made."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file"
    if not os.access(existing, os.W_OK):
        return f"{existing} is not writable"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as error:
        return f"{existing} is not writable: {error.strerror or error}"


def stale_temporaries(folder, names):
    """The temporaries that write_atomically left in `folder` when its process was killed (NAME.tmpPID.EXT
    whose PID runs no more: a temporary of a process still running stays); only those of the files
    `names` (a set of NAME.EXT, or a compiled pattern they match whole), so that a user's own file of
    such a name is never taken for one."""
    stale = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:  # hidden ones too (.generate.json's)
        match = TEMPORARY_NAME.fullmatch(name)
        path = os.path.join(folder, name)
        if match and _written_here(match["name"] + (match["ext"] or ""), names) and os.path.isfile(path) \
                and not process_exists(int(match["pid"])):
            stale.append(path)
    return stale


def _written_here(name, names):
    return bool(names.fullmatch(name)) if isinstance(names, re.Pattern) else name in names


def remove_temporaries(paths, killed, shown=lambda path: path):
    """Removes the stale temporaries `paths`, in one INFO line saying they were left by `killed`."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    if paths:
        log.info("removed %d temporary file(s) left by %s: %s", len(paths), killed, ", ".join(map(shown, paths)))
    return paths


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def writer_lock(lock_path, what, program, instead, remove=False):
    """Makes this process the only writer of `what` (a run, generate.py's output) while the block runs:
    an exclusive flock on `lock_path`, which holds the writer's PID for the message a second writer gets
    (UsageError: "WHAT is in use by another PROGRAM (PID N); wait for it to end, or INSTEAD"). The OS
    drops the lock when the process ends in any way, so a killed writer never leaves a stale one. With
    `remove` the file goes at the end, still locked: a writer that opened it meanwhile then finds that
    it locked a removed file, and locks the new one instead (_lock)."""
    descriptor = _lock(lock_path, what, program, instead)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock_path)
        os.close(descriptor)  # releases the lock


def check_unlocked(lock_path, what, program, instead):
    """UsageError naming the PID when another process holds writer_lock's `lock_path`; writes nothing."""
    try:
        descriptor = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if not _try_lock(descriptor):
            raise _in_use(descriptor, what, program, instead)
    finally:
        os.close(descriptor)


def _lock(lock_path, what, program, instead):
    """A descriptor of `lock_path` that holds its exclusive flock. A file removed after it was opened
    (by the writer that held it, at its end) is let go and the path opened again: locking it would
    leave two writers, this one on the removed file and the next one on a new file of the name."""
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(descriptor):
                raise _in_use(descriptor, what, program, instead)
            if _still_named(descriptor, lock_path):
                return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)


def _still_named(descriptor, path):
    """Whether `path` is still the file open as `descriptor`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _try_lock(descriptor):
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _in_use(descriptor, what, program, instead):
    holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
    return UsageError(f"{what} is in use by another {program} (PID {holder}); wait for it to end, or {instead}")


def write_json(path, value):
    write_atomically(path, lambda temporary: dump_json(temporary, value))


def dump_json(path, value):
    """`value` as the JSON file `path` (write_json's, without the temporary)."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


CHECKPOINT_NAME = re.compile(r"step-(\d+)\.npz")


class UnreadableCheckpoint(Exception):
    """A checkpoint file that is truncated, corrupt or not one of ours."""


def checkpoint_paths(run_dir):
    """The run's complete checkpoints, oldest first (half-written temporaries of a killed run are not)."""
    paths = glob.glob(os.path.join(run_dir, "checkpoints", "step-*.npz"))
    return sorted(p for p in paths if CHECKPOINT_NAME.fullmatch(os.path.basename(p)))


def save_checkpoint(run_dir, gan, step, epoch, pools, rng, keep=2):
    """All four networks, the three optimizers' states, the step, epoch and history pools, in one
    .npz written atomically; the `keep` newest checkpoints stay on disk."""
    arrays = {"step": np.array(step), "epoch": np.array(epoch)}
    for name, model in gan.models.items():
        for index, weight in enumerate(model.get_weights()):
            if not np.isfinite(weight).all():
                raise UsageError(f"step {step}: {name} has non-finite weights; not saved over the last "
                                      "good checkpoint (try a lower --lr)")
            arrays[f"weights/{name}/{index}"] = weight
        for index, state in enumerate(dropout_states(model)):
            arrays[f"dropout/{name}/{index}"] = np.asarray(state)
    for name, optimizer in gan.optimizers.items():
        for index, variable in enumerate(optimizer.variables):
            arrays[f"optimizer/{name}/{index}"] = np.asarray(variable)
    for name, pool in pools.items():
        arrays[f"pool/{name}"] = np.array(pool.images, np.float32)
    arrays["rng"] = np.frombuffer(json.dumps(rng.bit_generator.state).encode(), np.uint8)
    folder = os.path.join(run_dir, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:09d}.npz")
    write_atomically(path, lambda temporary: np.savez(temporary, **arrays))
    for old in checkpoint_paths(run_dir)[:-keep]:
        os.remove(old)
    return path


def load_checkpoint(path, gan, pools, rng):
    """Restores what save_checkpoint wrote; returns (step, epoch).

    The whole file is read and checked first (zip CRCs, every array present, shapes that fit the
    configured networks), so a bad file changes nothing: UnreadableCheckpoint if it is damaged,
    UsageError if it holds networks of other sizes. No pickles: np.load's default is safe.
    """
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        rng_state = json.loads(arrays["rng"].tobytes().decode())
        step, epoch = int(arrays["step"]), int(arrays["epoch"])
        stored = {name: _numbered(arrays, f"weights/{name}") for name in gan.models}
        dropout = {name: _numbered(arrays, f"dropout/{name}") for name in gan.models}
        slots = {name: _numbered(arrays, f"optimizer/{name}") for name in gan.optimizers}
        pool_images = {name: list(arrays[f"pool/{name}"]) for name in pools}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).splitlines()[:1])
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({type(error).__name__}: {reason})") from None
    named = CHECKPOINT_NAME.fullmatch(os.path.basename(path))
    if named and int(named[1]) != step:  # copied in from another run, or renamed: not this run's state
        raise UnreadableCheckpoint(f"{path}: holds step {step}, not the step {int(named[1])} of its name: a "
                                   "checkpoint of another run")
    for name, model in gan.models.items():
        expected = [tuple(w.shape) for w in model.weights]
        found = [w.shape for w in stored[name]]
        if found != expected:
            difference = (f"{len(found)} weight arrays, expected {len(expected)}" if len(found) != len(expected)
                          else "weight shape {}, expected {}".format(*next(
                              (f, e) for f, e in zip(found, expected) if f != e)))
            raise UsageError(f"{path}: its {name} does not fit the configured network ({difference}); "
                                  "resume with the network options it was trained with")
    for name, model in gan.models.items():
        model.set_weights(stored[name])
        for state, value in zip(dropout_states(model), dropout[name]):  # none in older checkpoints
            state.assign(value)
    for name, optimizer in gan.optimizers.items():
        for variable, value in zip(optimizer.variables, slots[name]):
            variable.assign(value)
    for name, pool in pools.items():
        pool.images = pool_images[name]
    rng.bit_generator.state = rng_state
    return step, epoch


def dropout_states(model):
    """The random states of a model's dropout layers (the U-Net's): not weights, yet a seeded run
    resumes bit-identically only with them."""
    return [variable for variable in model.variables if "seed_generator" in variable.path]


def _numbered(arrays, prefix):
    """arrays PREFIX/0, PREFIX/1, ... as a list (KeyError when one in between is missing)."""
    count = sum(key.startswith(f"{prefix}/") for key in arrays)
    return [arrays[f"{prefix}/{index}"] for index in range(count)]


def resume_checkpoint(run_dir, gan, pools, rng):
    """Loads the newest loadable checkpoint; returns (path, step, epoch).

    A damaged newer one is reported with a warning and, once an older one has loaded, set aside as
    NAME.corrupt (kept for inspection, no longer picked). With none loadable nothing is changed.
    """
    damaged, errors = [], []
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            step, epoch = load_checkpoint(path, gan, pools, rng)
        except UnreadableCheckpoint as error:
            log.warning("%s; trying the previous checkpoint", error)
            damaged.append(path)
            errors.append(str(error))
            continue
        for bad in damaged:
            os.replace(bad, bad + ".corrupt")
            log.warning("set the damaged checkpoint aside as %s.corrupt", bad)
        return path, step, epoch
    raise UsageError(f"no loadable checkpoint to resume from, nothing changed ({'; '.join(errors)})")


GENERATORS = ("generator_ab", "generator_ba")  # the final generators, RUN_DIR/NAME.keras


def generator_path(run_dir, name):
    return os.path.join(run_dir, f"{name}.keras")


def save_generator(run_dir, gan, name):
    path = generator_path(run_dir, name)
    write_atomically(path, gan.models[name].save)
    return path
