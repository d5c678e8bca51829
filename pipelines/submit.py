"""`ue submit`, `ue jobs`, `ue logs`: run `ue` commands on a Ray cluster through its job API.

    ue submit --address http://head:8265 -- protect --preset cifar10-paper --source s3://… --out s3://…
    ue jobs --address http://head:8265
    ue logs --address http://head:8265 ue-protect-1a2b3c4d

The job's runtime environment carries the settings a job needs and no secrets: the S3 endpoint and region,
the MLflow tracking URI (from the flags or this shell's environment) and any --env KEY=VALUE. Credentials
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, and any name containing SECRET, TOKEN or
PASSWORD) are refused: a job would show them in the dashboard and its logs, so the cluster's nodes provide
them (an instance profile, IRSA, or the environment of the nodes). The code is the package installed on the
cluster, this checkout when --working-dir is given, or what --pip installs for the job. `ray job submit … -- ue protect …` works the same way.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from typing import Any

from ue_core.errors import InvalidInputError, UEError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.IGNORECASE)
WORKING_DIR_EXCLUDES = [".git", ".venv", "data", "outputs", "results", "mlflow.db", "mlruns.db", "mlartifacts", "*.egg-info",
                        "__pycache__", ".pytest_cache", ".ruff_cache"]


def job_address(address: str | None) -> str:
    """The flag, else RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS (as `ray job submit` reads them), else
    the local dashboard."""
    if address:
        return address
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def runtime_env(extra_env: list[str], working_dir: str | None, pip: list[str] | None = None) -> dict[str, Any]:
    """The job's runtime environment: forwarded settings plus ``extra_env`` ("KEY=VALUE"), never secrets;
    ``working_dir`` ships a folder as the job's code, ``pip`` installs packages for the job."""
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    for item in extra_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInputError(f"--env takes KEY=VALUE, got {item!r}")
        env_vars[name] = value
    secret = sorted(name for name in env_vars if SECRET_NAME.search(name))
    if secret:
        raise InvalidInputError(
            f"--env {secret[0]}: credentials are not sent with a job (they would show in its logs and the "
            "dashboard); give them to the cluster's nodes instead"
        )
    env: dict[str, Any] = {"env_vars": env_vars}
    if working_dir is not None:
        if not os.path.isdir(working_dir):
            raise InvalidInputError(f"--working-dir {working_dir}: not a folder")
        env["working_dir"] = working_dir
        env["excludes"] = WORKING_DIR_EXCLUDES
    if pip:
        env["pip"] = list(pip)
    return env


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60's default on clusters; the token in ~/.ray
    target = job_address(address)
    try:
        return JobSubmissionClient(target)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UEError(f"cannot reach the Ray job API at {target}: {first}") from None


def submit(arguments: list[str], address: str | None, extra_env: list[str], working_dir: str | None,
           follow: bool, pip: list[str] | None = None) -> int:
    """Submit ``ue ARGUMENTS…``; print the job id; with ``follow``, stream its logs and return its exit code."""
    if not arguments:
        raise InvalidInputError("nothing to submit: give a ue command after --, e.g. ue submit -- protect …")
    if arguments[0] == "ue":
        arguments = arguments[1:]
    environment = runtime_env(extra_env, working_dir, pip)  # refuses credentials before anything is contacted
    jobs = client(address)
    submission_id = f"ue-{arguments[0]}-{uuid.uuid4().hex[:8]}"
    jobs.submit_job(entrypoint=shlex.join(["ue", *arguments]), submission_id=submission_id,
                    runtime_env=environment)
    print(f"submitted job {submission_id} to {job_address(address)}", flush=True)
    if not follow:
        return 0
    return follow_job(jobs, submission_id)


def follow_job(jobs, submission_id: str) -> int:
    """Stream the job's logs to stdout until it ends; 0 if it SUCCEEDED, else 1 (with its status on stderr)."""
    from ray.job_submission import JobStatus

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    status = jobs.get_job_status(submission_id)
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = jobs.get_job_status(submission_id)
    if status == JobStatus.SUCCEEDED:
        print(f"job {submission_id} SUCCEEDED", flush=True)
        return 0
    message = (jobs.get_job_info(submission_id).message or "").strip().splitlines()
    print(f"job {submission_id} {status.value}" + (f": {message[-1]}" if message else ""), file=sys.stderr)
    return 1


def list_jobs(address: str | None) -> str:
    """A table of the cluster's jobs, newest first."""
    jobs = sorted(client(address).list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    lines = [f"{'submission id':28} {'status':10} {'started':19} entrypoint"]
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        lines.append(f"{job.submission_id or job.job_id or '-':28} {job.status.value:10} {started:19} "
                     f"{job.entrypoint[:80]}")
    return "\n".join(lines)


def job_logs(address: str | None, submission_id: str) -> str:
    jobs = client(address)
    try:
        return jobs.get_job_logs(submission_id)
    except RuntimeError as error:
        raise UEError(f"no job {submission_id} at {job_address(address)}: {str(error).splitlines()[0]}") from None
