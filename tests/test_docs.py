"""The documentation says what the code does: docs/options.md lists exactly the options each script's
parser accepts, with the defaults it uses, and the README stays a short front page whose links lead
somewhere and whose test command is the one CI runs."""
import argparse
import dataclasses
import os
import re

import pytest

import bench
import convert
import config
import download
import evaluate
import generate
import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = {"train.py": config.build_parser, "generate.py": generate.build_parser,
           "evaluate.py": evaluate.build_parser, "bench.py": bench.build_parser,
           "download.py": download.build_parser, "main.py": main.build_parser, "convert.py": convert.build_parser}
REQUIRED = {"evaluate.py": ["--run-dir", "run"],  # what a command line needs before any other option
            "convert.py": ["out.onnx"]}
NO_VALUE = ("—", "off")  # the tables' words for "nothing set"
README_MAX_LINES = 220
TEST_COMMAND = "python -m pytest -q -n 2 --dist loadfile"


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def accepted_options(parser):
    """{option: takes a value} from the parser's --help: every option and positional argument as the
    user sees them (positionals by their name, upper-cased as the tables write them)."""
    options, section = {}, None
    for line in parser.format_help().splitlines():
        if line and not line.startswith(" "):
            section = line
            continue
        match = re.match(r"  (-{1,2}[\w-]+)(?:, (--[\w-]+))?(?: (?! )(\S+))?", line)
        if section in ("options:", "optional arguments:") and match:
            name = match.group(2) or match.group(1)
            if name != "--help":
                options[name] = match.group(3) is not None
        elif section == "positional arguments:" and re.match(r"  \w", line):
            options[line.split()[0].upper()] = True
    return options


def documented_options(script):
    """{option: (the option cell, the default cell)} from the script's table in docs/options.md."""
    sections = re.split(r"^## ", read("docs/options.md"), flags=re.M)
    section = next(s for s in sections if s.startswith(f"`{script}`"))
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            option = cells[0].strip("`").split()[0]
            assert option not in rows, f"{script}: {option} is documented twice"
            rows[option] = (cells[0].strip("`"), cells[1])
    return rows


def default_of(script, option):
    """The default the script uses: for train.py config.Config's field default (its parser fills
    nothing in) or --resume's, for the others their parser's."""
    if script == "train.py":
        _, resume = config.from_command_line(["--dataroot", "data"])
        return dict(dataclasses.asdict(config.Config()), resume=resume)[dest(option)]
    return PARSERS[script]().get_default(dest(option))


def parsed_value(script, option, text):
    """What the script's parser makes of `option text` on a command line."""
    args = PARSERS[script]().parse_args(REQUIRED.get(script, []) + [option, text])
    return getattr(args, dest(option))


def dest(option):
    return option.lstrip("-").replace("-", "_").lower()


def unset(value):
    """None or False, but not 0; or argparse's SUPPRESS (config.add_options: nothing filled in)."""
    return value is None or value is False or value == argparse.SUPPRESS


def same(value, default):
    """Equal, or the same file when the default is an absolute path and the table gives it relative
    to the repository."""
    if isinstance(default, str) and os.path.isabs(default) and isinstance(value, str):
        return os.path.normpath(os.path.join(REPO, value)) == os.path.normpath(default)
    return value == default


@pytest.mark.parametrize("script", PARSERS)
def test_every_option_of_a_script_is_documented_and_every_documented_one_exists(script):
    accepted, documented = accepted_options(PARSERS[script]()), documented_options(script)
    assert accepted, f"no options read from {script}'s --help"
    assert sorted(set(accepted) - set(documented)) == [], f"options of {script} missing from docs/options.md"
    assert sorted(set(documented) - set(accepted)) == [], f"docs/options.md documents options {script} lacks"
    for option, takes_value in accepted.items():
        cell = documented[option][0]
        assert (len(cell.split()) > 1 or not option.startswith("-")) == takes_value, \
            f"{script} {option}: the table's `{cell}` and whether it takes a value disagree"


@pytest.mark.parametrize("script", PARSERS)
def test_every_documented_default_is_the_one_the_script_uses(script):
    for option, (cell, default_cell) in documented_options(script).items():
        default = default_of(script, option)
        if default_cell.startswith(NO_VALUE):
            assert unset(default), f"{script} {option}: documented as {default_cell!r}, uses {default!r}"
            if default is False:
                assert default_cell == "off", f"{script} {option}: a switch is documented as off"
            continue
        assert not unset(default), f"{script} {option}: documented {default_cell!r}, but has none"
        literal = default_cell.split(" (")[0].strip("`")
        assert same(parsed_value(script, option, literal), default), \
            f"{script} {option}: documented default {literal!r}, the script uses {default!r}"


def test_the_tables_are_checked_for_real():
    """The checks above read what they should: a wrong default or a missing option would be seen."""
    assert documented_options("train.py")["--lr"] == ("--lr X", "2e-4")
    assert not same(parsed_value("train.py", "--lr", "2e-3"), default_of("train.py", "--lr"))
    assert accepted_options(download.build_parser())["NAME"] is True
    assert accepted_options(generate.build_parser())["--overwrite"] is False
    assert set(accepted_options(config.build_parser())) == {"--" + name.replace("_", "-")
                                                            for name in config.FIELDS} | {"--resume"}


def anchors(markdown):
    """The #anchors GitHub gives the headings: lower case, punctuation dropped, spaces as dashes."""
    return {re.sub(r"[^\w -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_the_readme_is_a_short_front_page_whose_docs_links_resolve():
    readme = read("README.md")
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\((docs/[^)#\s]+)\)", readme)
    assert "docs/options.md" in links and "docs/demo.png" in links
    for link in links:
        assert os.path.isfile(os.path.join(REPO, link)), f"README.md links to {link}, which is not there"


def test_links_between_the_docs_lead_to_a_file_and_a_heading():
    pages = [name for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")]
    assert "options.md" in pages
    for page in pages:
        for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", read(f"docs/{page}")):
            assert target in pages, f"docs/{page} links to {target}, which is not in docs/"
            assert not anchor or anchor in anchors(read(f"docs/{target}")), f"docs/{page}: no #{anchor} in {target}"


def test_the_readme_gives_the_test_command_that_ci_runs():
    for path in ("README.md", ".ci/run"):
        lines = [line.strip() for line in read(path).splitlines()]
        assert TEST_COMMAND in lines, f"{path} must give the line {TEST_COMMAND}"


def defined_tests():
    """{file name: the tests and the tables of cases (TRAIN_ERRORS) it defines} for each file of tests/."""
    pattern = re.compile(r"^(?:def (test_\w+)|([A-Z_]+_ERRORS) = )", re.M)
    return {name: {a or b for a, b in pattern.findall(read(f"tests/{name}"))}
            for name in os.listdir(os.path.join(REPO, "tests")) if name.endswith(".py")}


def test_every_test_the_docs_name_exists_in_the_file_they_name():
    """The docs' evidence (`test_x.py::test_name`, a bare `test_name`, or a name's start and an ellipsis)
    names tests that are there: a test renamed or moved to another file shows here."""
    tests = defined_tests()
    everywhere = set().union(*tests.values())
    named = re.compile(r"`(?:(?:tests/)?(test_\w+\.py)::)?((?:test_\w+|[A-Z_]+_ERRORS)…?)`")
    pages = ["README.md"] + [f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")]
    count = 0
    for page in pages:
        for file, name in named.findall(read(page)):
            found = tests.get(file, set()) if file else everywhere
            assert any(test == name or name.endswith("…") and test.startswith(name[:-1]) for test in found), (
                f"{page} names {file + '::' if file else ''}{name}, which is not a test there")
            count += 1
    assert count > 40  # the pattern reads the docs' names (docs/reliability.md holds most)
