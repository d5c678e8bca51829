"""Run many `ue` command lines, each in its own process, without paying the import of `ue` each time.

``python forking_cli.py WORKERS`` imports `ue` (and torch, MLflow) once, reads a JSON list of jobs
``{"argv", "cwd", "env", "stdout", "stderr"}`` from stdin, forks one child per job (at most WORKERS at a
time) that runs ``pipelines.cli.main(argv)`` as ``python -m pipelines.cli`` would (its working directory, its
environment, stdout and stderr to files, exit status from main or SystemExit), and prints the JSON list of
their exit statuses. The table of bad inputs (test_bad_inputs.py) runs its cases through it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

PRELOAD = ("torch", "mlflow", "pipelines.cli", "pipelines.config", "pipelines.protect", "pipelines.evaluate",
           "pipelines.sweep", "pipelines.submit", "pipelines.storage", "ue_core.release", "ue_core.defences")


def child(job: dict) -> None:
    """In the forked child: run the job's command line and exit with its status (never returns)."""
    code = 1
    try:
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        from pipelines.cli import main

        code = main(job["argv"])
    except SystemExit as exit_:  # argparse's usage errors, like `python -m pipelines.cli`
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001 - a traceback, as the interpreter would print it
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_all(jobs: list[dict], workers: int) -> list[int]:
    """Fork a child per job, at most ``workers`` alive at once; their exit statuses in job order."""
    running: dict[int, int] = {}
    codes = [0] * len(jobs)
    for number, job in enumerate(jobs):
        if len(running) >= workers:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = number
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return codes


if __name__ == "__main__":
    for module in PRELOAD:
        importlib.import_module(module)
    print(json.dumps(run_all(json.load(sys.stdin), int(sys.argv[1]))))
