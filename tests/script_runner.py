"""One child process that runs the scripts' command lines for the tests, each as its own `python SCRIPT
ARGS` would: TensorFlow starts once a session, not once per command line (test_generate, test_export,
test_pretrained and test_evaluate share it)."""
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One child process that runs the scripts' command lines in turn, each as `python SCRIPT ARGS` run in
# CWD would: as __main__ with its own sys.argv, its file descriptors 1 and 2 on files of its own (so
# that C-level output, TensorFlow's or libjpeg's, is caught too), the CPU kernels off as in a new
# process, and the exit status Python gives (SystemExit's code; a message is printed on stderr with
# status 1; any other exception, a traceback and 1). TensorFlow starts once, not once per command line;
# what a process prints once (TensorFlow's start-up, a first warning) comes with its first command.
SCRIPT_RUNNER = r"""
import json, os, runpy, sys, traceback
sys.path[0] = os.getcwd()  # the repository, as for `python SCRIPT`, whatever folder a command runs in
requests, replies = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the commands' stdin: empty
for request in requests:
    argv, cwd, out, err = json.loads(request)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    if "cpu_kernels" in sys.modules:  # an earlier generate.py or evaluate.py turned them on
        sys.modules["cpu_kernels"].use(False)
    sys.argv, status = argv, 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            status = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    print(status, file=replies, flush=True)
os._exit(0)  # without TensorFlow's clean-up at the end: seconds that prove nothing
"""


class ScriptRunner:
    """SCRIPT_RUNNER's process; run() returns what subprocess.run(capture_output=True, text=True) would.
    Its environment has an empty Keras cache (KERAS_HOME: no InceptionV3 weights) and no network (a proxy
    that refuses)."""

    def __init__(self, folder):
        self.folder, self.count = Path(folder), 0
        self.keras_home = self.folder / "keras_home"
        self.keras_home.mkdir()
        env = dict(os.environ, KERAS_HOME=str(self.keras_home), https_proxy="http://127.0.0.1:9",
                   HTTPS_PROXY="http://127.0.0.1:9")
        self.process = subprocess.Popen([sys.executable, "-c", SCRIPT_RUNNER], cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, script, *args, cwd=ROOT):
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        argv = [os.path.join(ROOT, script), *map(str, args)]
        self.process.stdin.write(json.dumps([argv, str(cwd), str(out), str(err)]) + "\n")
        self.process.stdin.flush()
        if not select.select([self.process.stdout], [], [], 300)[0]:
            self.process.kill()
            pytest.fail(f"{argv} still running after 300 s")
        status = int(self.process.stdout.readline())
        return subprocess.CompletedProcess(argv, status, out.read_text(), err.read_text())

    def close(self):
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


RUNNER = pytest.StashKey()


def session_scripts(request):
    """The pytest session's one ScriptRunner, started by the first test that asks for it and ended with
    the session: the modules that run scripts (they call this) share one start of TensorFlow."""
    if RUNNER not in request.config.stash:
        runner = ScriptRunner(request.getfixturevalue("tmp_path_factory").mktemp("scripts"))
        request.config.stash[RUNNER] = runner
        request.session.addfinalizer(runner.close)
    return request.config.stash[RUNNER]
