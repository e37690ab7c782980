"""Command-line plumbing shared by the scripts: one-line errors, --help with defaults, option types.

It imports no TensorFlow, so a script that needs none (download.py) starts in a fraction of a second.
"""
import argparse
import logging
import math
import sys


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


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def image_size(text):
    value = positive_int(text)
    if value % 4 or value < 32:
        raise argparse.ArgumentTypeError(f"expected a multiple of 4 that is at least 32, got {text}")
    return value


PRECISIONS = ("float16", "bfloat16")


def add_mixed_precision_option(parser, help):
    """--mixed-precision [float16|bfloat16], "auto" when given alone (see distribute.precision_policy)."""
    parser.add_argument("--mixed-precision", nargs="?", const="auto", choices=("auto",) + PRECISIONS,
                        metavar="{float16,bfloat16}", help=help)
