"""Keras and TensorFlow, imported with TensorFlow's C++ start-up notes (CUDA probing, oneDNN) kept off
the terminal: they are written to file descriptor 2 before any log level applies.

    from quiet import keras        # the networks, the training step: any Keras backend
    from quiet import tensorflow   # the input pipeline and TensorBoard's writer
    tf = tensorflow()

Under the JAX or PyTorch backend, importing keras here imports no TensorFlow; tensorflow() does, for the
modules that need it whatever the backend (tf.data, tf.summary), as Keras' own guides use it.
"""
import contextlib
import functools
import importlib
import logging
import os
import sys
import threading

_stderr_lock = threading.RLock()  # the threads of a process share file descriptor 2


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 pointed at /dev/null meanwhile: C++ code writes its notes straight there, past
    any log level (TensorFlow's start-up, libjpeg on a broken file, LiteRT's converter and runtime).
    Errors still surface as Python exceptions."""
    with _stderr_lock:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _without_stderr(name):
    """Imports module `name` with stderr_silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with stderr_silenced():
        try:
            return importlib.import_module(name)
        except KeyboardInterrupt:  # Ctrl-C in the seconds of the import, before a script's run_cli is there
            sys.exit(f"{os.path.basename(sys.argv[0])}: interrupted")


BACKENDS = ("tensorflow", "jax", "torch")  # the Keras backends this project trains on


def _import_keras():
    """Keras, or one line and exit status 1 where its backend (KERAS_BACKEND, or ~/.keras/keras.json) is
    not one of BACKENDS or is not installed: Keras raises that while it is imported, before any script's
    own error handling runs."""
    try:
        module = _without_stderr("keras")
        name = module.backend.backend()
        problem = None if name in BACKENDS else f"{name!r} cannot train"
    except (ImportError, ValueError) as error:
        problem = str(error)
    if problem:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: KERAS_BACKEND (or ~/.keras/keras.json): {problem}; "
                 f"expected one of {', '.join(BACKENDS)}, installed")
    return module


logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # JAX's probing for TPUs it lacks
keras = _import_keras()  # under the TensorFlow backend, this imports TensorFlow too


@functools.cache
def tensorflow():
    tf = _without_stderr("tensorflow")
    tf.get_logger().setLevel("ERROR")  # e.g. retracing notes when images of many sizes go through
    return tf


def backend():
    """Keras' backend: "tensorflow", "jax" or "torch" (KERAS_BACKEND, or ~/.keras/keras.json)."""
    return keras.backend.backend()
