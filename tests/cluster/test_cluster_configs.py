"""The cluster configs in cluster/ parse and carry what Ray's cluster launcher and KubeRay require.

Nothing is launched: the AWS launcher YAML is checked against the schema that ships with the installed Ray
(ray/autoscaler/ray-schema.json) and run through the same offline steps `ray up` takes before it calls AWS
(prepare_config, validate_config); the KubeRay manifests are checked against a subset of the RayCluster /
RayJob CRDs transcribed from KubeRay's API types (ray-operator/apis/ray/v1/raycluster_types.go and
rayjob_types.go: the required fields, the field names of the specs, and their types). The RayJob's entrypoint
is parsed with the real `ue` argument parser and its runtime env with Ray's RuntimeEnv.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
AWS_YAML = CLUSTER / "aws.yaml"
KUBERAY = CLUSTER / "kuberay"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"

# vCPUs and GPUs of the instance types the launcher config may use (AWS's published specs), so that the
# resources a node type advertises to the autoscaler match the machine it launches.
INSTANCE_TYPES = {
    "m6i.xlarge": (4, 0), "m6i.2xlarge": (8, 0), "m6i.4xlarge": (16, 0), "m7i.2xlarge": (8, 0),
    "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.4xlarge": (16, 1), "g5.12xlarge": (48, 4),
    "g6.xlarge": (4, 1), "g6.2xlarge": (8, 1), "g6e.xlarge": (4, 1), "p4d.24xlarge": (96, 8),
}
INSTANCE_PROFILE_ARN = re.compile(r"^arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")
ROLE_ARN = re.compile(r"^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$")
# The project's image (cluster/Dockerfile, FROM Ray's GPU image of the client's Ray; tests/packaging checks
# it), in some registry: head and workers run it, tagged with the package version.
PROJECT_IMAGE = re.compile(r"^[\w.-]+(?::\d+)?/(?:[\w.-]+/)*unlearnable-beo:(?P<version>[\w.-]+)$")

# --- KubeRay: a subset of the CRDs, transcribed from ray-operator/apis/ray/v1/*_types.go -----------------
_INT = {"type": "integer", "minimum": 0}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^\d+(\.\d+)?([KMGTPE]i?|m)?$"}]}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"},
                                                          "value": {"type": "string"}}}},
        "resources": {"type": "object", "additionalProperties": False,
                      "properties": {"requests": {"type": "object", "additionalProperties": _QUANTITY},
                                     "limits": {"type": "object", "additionalProperties": _QUANTITY}}},
        "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"]}},
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "serviceAccountName": {"type": "string"},
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
            },
        },
    },
}
# RayClusterSpec: headGroupSpec required; in HeadGroupSpec `template` is required; in WorkerGroupSpec
# groupName, minReplicas, maxReplicas and template are (their json tags have no omitempty and no +optional).
RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "upgradeStrategy": {"type": "object"},
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["disabled", "token"]},
                                       "secretName": {"type": "string"},
                                       "enableK8sTokenAuth": {"type": "boolean"}}},
        "suspend": {"type": "boolean"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": _STR_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "rayVersion": {"type": "string"},
        "headGroupSpec": {
            "type": "object",
            "required": ["template"],
            "additionalProperties": False,
            "properties": {
                "template": _POD_TEMPLATE, "headService": {"type": "object"}, "enableIngress": {"type": "boolean"},
                "resources": _STR_MAP, "labels": _STR_MAP, "rayStartParams": _STR_MAP,
                "serviceType": {"type": "string"},
            },
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "minReplicas", "maxReplicas", "template"],
                "additionalProperties": False,
                "properties": {
                    "suspend": {"type": "boolean"}, "groupName": {"type": "string", "minLength": 1},
                    "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT, "idleTimeoutSeconds": _INT,
                    "resources": _STR_MAP, "labels": _STR_MAP, "rayStartParams": _STR_MAP,
                    "template": _POD_TEMPLATE, "scaleStrategy": {"type": "object"}, "numOfHosts": _INT,
                },
            },
        },
    },
}
RAY_JOB_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1}, "backoffLimit": _INT,
        "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": {"type": "object"}, "metadata": _STR_MAP,
        "clusterSelector": _STR_MAP, "submitterConfig": {"type": "object"}, "managedBy": {"type": "string"},
        "deletionStrategy": {"type": "object"}, "entrypoint": {"type": "string"},
        "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
        "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": _INT,
        "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"},
        "schedule": {"type": "string"},
    },
}


def _manifest(kind: str, spec_schema: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
            "spec": spec_schema,
        },
    }


RAY_CLUSTER_MANIFEST = _manifest("RayCluster", RAY_CLUSTER_SPEC)
RAY_JOB_MANIFEST = _manifest("RayJob", RAY_JOB_SPEC)


# --- helpers ----------------------------------------------------------------------------------------------
def load(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def aws() -> dict:
    return load(AWS_YAML)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(KUBERAY / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load(KUBERAY / "rayjob.yaml")


@pytest.fixture(scope="module")
def service_account() -> dict:
    return load(KUBERAY / "serviceaccount.yaml")


def cluster_specs(raycluster: dict, rayjob: dict) -> list[tuple[str, dict]]:
    return [("raycluster.yaml", raycluster["spec"]), ("rayjob.yaml", rayjob["spec"]["rayClusterSpec"])]


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec["workerGroupSpecs"])]


def gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})]


def shell_commands(text: str) -> list[str]:
    """The commands of a launcher command string, split at ; && || (enough for these one-liners)."""
    return [part.strip() for part in re.split(r";|&&|\|\|", text) if part.strip()]


# --- AWS cluster launcher ---------------------------------------------------------------------------------
def test_aws_yaml_matches_ray_launcher_schema(aws):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(RAY_SCHEMA.read_text())
    jsonschema.validate(aws, schema)
    # the schema is strict enough to catch what a typo or a fractional GPU would break
    bad = copy.deepcopy(aws)
    bad["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = copy.deepcopy(aws)
    bad["worker_start_commands"] = bad.pop("worker_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_aws_yaml_passes_ray_up_offline_validation(aws):
    """What `ray up` does before it talks to AWS: merge the provider's defaults, then validate."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == aws["head_node_type"]
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_aws_node_types(aws):
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in aws, f"aws.yaml lacks {key}"
    assert aws["provider"]["region"] and aws["provider"]["cache_stopped_nodes"] is False
    assert aws["auth"]["ssh_user"] == "ubuntu"
    types = aws["available_node_types"]
    head = aws["head_node_type"]
    assert head in types
    workers = {name: t for name, t in types.items() if name != head}
    assert types[head]["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type advertises a GPU"
    for name, node_type in types.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_TYPES, f"{name}: unknown instance type {instance} (add it to INSTANCE_TYPES)"
        cpus, gpus = INSTANCE_TYPES[instance]
        assert node_type["resources"].get("CPU") == cpus, f"{name}: CPU resources do not match {instance}"
        assert node_type["resources"].get("GPU", 0) == gpus, f"{name}: GPU resources do not match {instance}"
        assert node_type["node_config"]["ImageId"], f"{name}: no ImageId"
    for name, node_type in gpu_types.items():
        # the pipeline sizes itself from the GPUs present when a job starts: there must be some
        assert node_type["min_workers"] >= 1, f"{name}: min_workers 0 leaves jobs without GPUs"
        assert node_type["min_workers"] <= node_type["max_workers"] <= aws["max_workers"]


def test_aws_instance_profiles_give_s3_access(aws):
    for name, node_type in aws["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile, f"{name}: no IamInstanceProfile (S3 access must come from an instance profile)"
        assert INSTANCE_PROFILE_ARN.match(profile["Arn"]), f"{name}: {profile['Arn']} is not an instance-profile ARN"


def test_aws_start_commands_and_token_auth(aws):
    head = [c for line in aws["head_start_ray_commands"] for c in shell_commands(line)]
    worker = [c for line in aws["worker_start_ray_commands"] for c in shell_commands(line)]
    for commands in (head, worker):
        assert commands[0].endswith("ray stop")
        assert "export RAY_AUTH_MODE=token" in " ".join(commands) or any(
            c.startswith("RAY_AUTH_MODE=token ") for c in commands)
    start_head = next(c for c in head if " start " in f" {c} ")
    for flag in ("--head", "--port=6379", "--dashboard-host=0.0.0.0",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in start_head.split(), f"head start command lacks {flag}"
    start_worker = next(c for c in worker if " start " in f" {c} ")
    assert "--address=$RAY_HEAD_IP:6379" in start_worker.split()
    # the token reaches every node as a file, copied from the client's default token path
    assert aws["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_aws_installs_this_project_with_the_client_ray_version(aws):
    setup = " ".join(aws["setup_commands"])
    pins = re.findall(r"ray\[[a-z,]+\]==([\d.]+)", setup)
    assert pins == [ray.__version__], f"setup_commands pin Ray {pins}, the client has {ray.__version__}"
    assert "[ray]" in setup, "the project is installed without its [ray] extra"
    for remote, local in aws["file_mounts"].items():
        if remote.startswith("~/ue-src/"):
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} is not in the repository"
    mounted = {Path(local).name for remote, local in aws["file_mounts"].items() if remote.startswith("~/ue-src/")}
    assert {"pyproject.toml", "ue_core", "pipelines"} <= mounted


# --- KubeRay ----------------------------------------------------------------------------------------------
def test_kuberay_manifests_match_crd_subset(raycluster, rayjob):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(raycluster, RAY_CLUSTER_MANIFEST)
    jsonschema.validate(rayjob, RAY_JOB_MANIFEST)
    broken = copy.deepcopy(raycluster)
    del broken["spec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAY_CLUSTER_MANIFEST)
    broken = copy.deepcopy(rayjob)
    broken["spec"]["shutdownAfterJobFinish"] = broken["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RAY_JOB_MANIFEST)


def test_kuberay_kinds(raycluster, rayjob, service_account):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert (service_account["apiVersion"], service_account["kind"]) == ("v1", "ServiceAccount")


def test_kuberay_images_are_the_project_image_and_ray_version_matches_installed_ray(raycluster, rayjob):
    from pipelines import __version__

    for name, spec in cluster_specs(raycluster, rayjob):
        assert spec["rayVersion"] == ray.__version__, f"{name}: rayVersion {spec['rayVersion']}"
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            image = group["template"]["spec"]["containers"][0]["image"]
            match = PROJECT_IMAGE.match(image)
            assert match and match["version"] == __version__, f"{name}: image {image} (package {__version__})"


def test_kuberay_head_group(raycluster, rayjob):
    for name, spec in cluster_specs(raycluster, rayjob):
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", name
        container = head["template"]["spec"]["containers"][0]
        ports = {p["containerPort"] for p in container["ports"]}
        assert {6379, 8265} <= ports, f"{name}: head ports {ports}"
        assert "nvidia.com/gpu" not in container["resources"]["limits"], f"{name}: the head is a CPU pod"
        assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]


def test_kuberay_gpu_worker_group(raycluster, rayjob):
    for name, spec in cluster_specs(raycluster, rayjob):
        groups = gpu_groups(spec)
        assert groups, f"{name}: no worker group with nvidia.com/gpu limits"
        for group in groups:
            assert group["groupName"]
            assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
            resources = group["template"]["spec"]["containers"][0]["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) == 1
            # Kubernetes requires requests == limits for extended resources such as GPUs
            assert resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) == \
                resources["limits"]["nvidia.com/gpu"]
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), "GPU nodes are usually tainted"


def test_kuberay_s3_through_irsa_and_env(raycluster, rayjob, service_account):
    role = service_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert ROLE_ARN.match(role), role
    account = service_account["metadata"]["name"]
    for name, spec in cluster_specs(raycluster, rayjob):
        for template in pod_templates(spec):
            assert template["spec"]["serviceAccountName"] == account, f"{name}: pods must use {account}"
            env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0].get("env", [])}
            assert env.get("AWS_REGION"), f"{name}: no AWS_REGION"
            assert env.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")), name
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env), name


def test_kuberay_token_auth(raycluster, rayjob):
    for name, spec in cluster_specs(raycluster, rayjob):
        assert spec["authOptions"]["mode"] == "token", name


def test_rayjob_brings_its_own_cluster(raycluster, rayjob):
    spec = rayjob["spec"]
    assert "clusterSelector" not in spec
    assert spec["rayClusterSpec"] == raycluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and 0 <= spec["ttlSecondsAfterFinished"] <= 3600
    assert spec["submissionMode"] == "K8sJobMode"


def test_rayjob_entrypoint_is_a_valid_ue_protect_on_s3(rayjob):
    from pipelines.cli import build_parser

    entrypoint = rayjob["spec"]["entrypoint"]
    assert entrypoint.startswith("ue ")
    argv = shlex.split(entrypoint)
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"rayjob.yaml: the entrypoint `{entrypoint}` does not parse as a ue command")
    assert args.command == "protect"
    assert (REPO / "pipelines" / "presets" / f"{args.preset}.yaml").is_file(), f"no preset {args.preset}"
    assert args.source.startswith("s3://") and args.out.startswith("s3://")
    assert args.source.rstrip("/") != args.out.rstrip("/")


def test_rayjob_runtime_env(rayjob):
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and isinstance(runtime_env["env_vars"], dict)
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values()), "env_vars values must be strings"
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    RuntimeEnv(**runtime_env)  # Ray's own validation of the fields (pip, env_vars, …)
    assert "pip" not in runtime_env, "the project is in the image (cluster/Dockerfile); a per-job pip install would only repeat it"
    assert not any(name.startswith("AWS_") for name in runtime_env["env_vars"]), "S3 access is the nodes' role"


# --- no credentials anywhere ------------------------------------------------------------------------------
SECRET_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),                                   # access key ids
    re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}", re.IGNORECASE),
    re.compile(r"aws_session_token\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{30,}", re.IGNORECASE),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9/+=_-]{16,}"),
]
SECRET_KEYS = re.compile(r"access_key|secret|session_token|auth_token|password", re.IGNORECASE)


def find_secrets(text: str) -> list[str]:
    return [m.group(0) for pattern in SECRET_PATTERNS for m in pattern.finditer(text)]


def secret_values(node, path="") -> list[str]:
    """YAML keys or K8s env entries that name a credential and carry a literal value."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and SECRET_KEYS.search(node["name"]) and node.get("value"):
            found.append(f"{path}.{node['name']}")
        for key, value in node.items():
            if SECRET_KEYS.search(str(key)) and isinstance(value, str) and value and "/" not in value:
                found.append(f"{path}.{key}")
            found += secret_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += secret_values(item, f"{path}[{i}]")
    return found


def test_no_credentials_in_cluster_files():
    # the cloud configs and their README (cluster/local/ is a dev cluster with its own throwaway keys)
    files = [AWS_YAML, CLUSTER / "README.md", *sorted(p for p in KUBERAY.rglob("*") if p.is_file())]
    assert len(files) >= 5
    for path in files:
        text = path.read_text()
        assert not find_secrets(text), f"{path.relative_to(REPO)}: {find_secrets(text)}"
        if path.suffix in {".yaml", ".yml"}:
            for document in yaml.safe_load_all(text):
                assert not secret_values(document), f"{path.relative_to(REPO)}: {secret_values(document)}"
    # the scanners do find what they look for
    planted = "AKIA" + "IOSFODNN7EXAMPLE"
    assert find_secrets(f"key: {planted}") == [planted]
    assert secret_values({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]})


# --- the README's commands --------------------------------------------------------------------------------
def check_runtime_env(runtime_env: dict) -> None:
    """A job runtime env that Ray accepts and that carries no credentials."""
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)
    assert not any(SECRET_KEYS.search(name) for name in runtime_env.get("env_vars", {})), runtime_env


def readme_ue_commands() -> list[list[str]]:
    """argv of every `ue …` command in cluster/README.md's shell blocks: `ue X …`, the command after
    `ue submit … --`, and the `ue …` after `ray job submit … --`."""
    text = (CLUSTER / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["ue"]:
                commands.append(argv[1:])
                if argv[1:2] == ["submit"]:
                    commands.append(argv[argv.index("--") + 1:])
            elif argv[:3] == ["ray", "job", "submit"]:
                inner = argv[argv.index("--") + 1:]
                if "--runtime-env-json" in argv:
                    check_runtime_env(json.loads(argv[argv.index("--runtime-env-json") + 1]))
                assert inner[:1] == ["ue"], f"README: `{line.strip()}` does not run ue"
                commands.append(inner[1:])
    return commands


def test_readme_ue_commands_parse():
    from pipelines.cli import build_parser

    commands = readme_ue_commands()
    assert {argv[0] for argv in commands} >= {"submit", "protect", "sweep"}
    parser = build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"cluster/README.md: `ue {shlex.join(argv)}` does not parse")
        if args.command in ("protect", "sweep"):
            assert args.source.startswith("s3://") and args.out.startswith("s3://"), shlex.join(argv)
        if args.command == "sweep":
            assert (REPO / "pipelines" / "sweeps" / f"{args.sweep}.yaml").is_file(), args.sweep
