"""Command-line plumbing shared by the scripts: one-line errors, --help with defaults, option types.

It imports no TensorFlow, so a script that needs none (download.py) starts in a fraction of a second.
"""
import argparse
import logging
import math
import sys
import time


class UsageError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def setup_logging():
    """WARNING:/INFO: prefixed lines on stderr, the same in every script."""
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.INFO)


def run_cli(main_function, program, interrupted="interrupted"):
    """Runs a script's main: bad input (UsageError, or an OSError such as a full disk) ends with one
    line on stderr and exit status 1, Ctrl-C with `interrupted`."""
    setup_logging()
    try:
        main_function()
    except (UsageError, OSError) as error:
        sys.exit(f"{program}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"{program}: {interrupted}")


def number(kind, text, expected, valid):
    """`text` as an int or float (`kind`) for which `valid(value)` holds, else argparse's one-line error
    "expected ..., got TEXT" (for text that is no number too: argparse would name this function)."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text):
    return number(int, text, "a positive integer", lambda value: value > 0)


def non_negative_int(text):
    return number(int, text, "an integer >= 0", lambda value: value >= 0)


def non_negative_float(text):
    return number(float, text, "a finite number >= 0", lambda value: 0 <= value < math.inf)


def positive_float(text):
    return number(float, text, "a finite number > 0", lambda value: 0 < value < math.inf)


def image_size(text):
    return number(int, text, "a multiple of 4 that is at least 32", lambda value: value >= 32 and value % 4 == 0)


def path(text):
    """A file or folder path: an empty one would mean the working directory, and a run must not."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


PRECISIONS = ("float16", "bfloat16")


def add_mixed_precision_option(parser, help):
    """--mixed-precision [float16|bfloat16], "auto" when given alone (see distribute.precision_policy)."""
    parser.add_argument("--mixed-precision", nargs="?", const="auto", choices=("auto",) + PRECISIONS,
                        metavar="{float16,bfloat16}", help=help)


class Progress:
    """Progress of a long loop. On a terminal it is Keras' live Progbar; anywhere else (a log file, a
    pipe, a CI job) the bar's carriage returns and colour codes would be garbage, so it writes one plain
    line every `print_every` units and one at the end:

        step 120/2000  D_A 0.213  D_B 0.198  G 3.41  0.35 s/step  ETA 0:11:02

    `start` is where a resumed loop begins: its speed and ETA count only the units done since.
    """

    def __init__(self, total, unit="step", print_every=1, stream=None, start=0):
        self.total, self.unit, self.print_every, self.start = total, unit, print_every, start
        self.stream = stream or sys.stdout
        self.last_printed = start
        self.started = time.monotonic()
        self.terminal = self.stream.isatty()
        self.bar, self.texts = None, {}

    def update(self, done, values=None):
        """`done` units finished so far; `values` maps names to numbers or short texts."""
        values = values or {}
        if self.terminal:
            self._update_bar(done, values)
            return
        due = done // self.print_every > self.last_printed // self.print_every
        finished = done >= self.total > self.last_printed
        if due or finished:
            self.last_printed = done
            print(self.line(done, values), file=self.stream, flush=True)

    def line(self, done, values):
        elapsed = time.monotonic() - self.started
        per_unit = elapsed / max(done - self.start, 1)
        parts = [f"{self.unit} {done}/{self.total}"]
        parts += [f"{name} {value if isinstance(value, str) else format(float(value), '.3g')}"
                  for name, value in values.items()]
        parts.append(f"{per_unit:.3g} s/{self.unit}")
        parts.append(f"took {clock(elapsed)}" if done >= self.total else f"ETA {clock(per_unit * (self.total - done))}")
        return "  ".join(parts)

    def _update_bar(self, done, values):
        """Keras' bar, made at the first update so that it shows the numbers as they are (not as running
        means). The bar takes numbers only: texts (an epoch count) get a line of their own above it
        whenever they change."""
        import contextlib

        from quiet import keras  # here, not at the top: cli.py imports no Keras (and so no TensorFlow)

        texts = {name: value for name, value in values.items() if isinstance(value, str)}
        if texts != self.texts:
            self.texts = texts
            after_bar = "\n" if self.bar is not None else ""  # the bar's line has no newline of its own yet
            print(after_bar + "  ".join(f"{name} {value}" for name, value in texts.items()), file=self.stream,
                  flush=True)
        numbers = [(name, float(value)) for name, value in values.items() if not isinstance(value, str)]
        if self.bar is None:
            self.bar = keras.utils.Progbar(self.total, unit_name=self.unit, stateful_metrics=[n for n, _ in numbers])
        with contextlib.redirect_stdout(self.stream):  # Progbar writes to sys.stdout
            self.bar.update(done, numbers)


def clock(seconds):
    """Seconds as h:mm:ss."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
