"""deploy/ holds together without a cluster: every YAML parses; the Ray cluster launcher
config passes Ray's own checks; the KubeRay RayCluster and RayJob carry what the KubeRay v1
CRDs and the operator require; GPU containers ask for GPUs; no credential is written
inline; the job entrypoints are valid `speechmed` command lines naming configs that exist
and parse; the runtime_envs are valid and install nothing; the image recipe pins what the
adapters were written against. Each checker is also run on deliberately broken copies, and
must reject them."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import parse_config
from tests.conftest import REPO
from tests.test_configs import FIXTURE_FOR_FORMAT

DEPLOY = REPO / "deploy"
CLUSTER = DEPLOY / "cluster.yaml"
RUNTIME_ENV = DEPLOY / "runtime_env.yaml"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# --- What the KubeRay v1 CRDs require -------------------------------------------------
# Read from ray-project/kuberay, ray-operator/config/crd/bases/ray.io_rayclusters.yaml and
# ray.io_rayjobs.yaml (the `v1` version's openAPIV3Schema `required` lists), at releases
#   v1.7.0  59d663aeec13760646da3db9c1cf8cfe883e30b7
#   v1.3.2  66e4132c0d3f0fe1f258004073284583994b2341
# Up to v1.3 the CRD also requires `rayStartParams` in the head group
# and in every worker group (v1.4 made it optional): the union is required here, so the
# manifests apply to any ray.io/v1 operator.
#   RayCluster.spec                      headGroupSpec
#   headGroupSpec                        template (+ rayStartParams up to v1.3)
#   workerGroupSpecs[]                   groupName, maxReplicas, minReplicas, template (+ rayStartParams up to v1.3)
#   template.spec                        containers
#   containers[]                         name;  env[]: name;  ports[]: containerPort;  volumeMounts[]: name, mountPath
#   env[].valueFrom.secretKeyRef         key
#   RayJob.spec                          nothing (rayClusterSpec: as RayCluster.spec)
# Types the schema declares for the fields used here: rayStartParams is a map of strings;
# replicas / minReplicas / maxReplicas / ttlSecondsAfterFinished / backoffLimit integers;
# rayVersion, entrypoint, runtimeEnvYAML strings; shutdownAfterJobFinishes a boolean.
# Checks of the operator itself (ray-operator/controllers/ray/utils/validation.go, v1.7.0):
# the name is a DNS-1035 label of at most 53 characters (RayCluster) or 47 (RayJob); every
# group has a container; with the autoscaler off, min and max replicas are set; 0 <= min <=
# max; num-cpus/num-gpus/memory/resources not both in rayStartParams and the group's
# `resources`; no rayStartParams["labels"]; a RayJob has rayClusterSpec or clusterSelector;
# ttlSecondsAfterFinished >= 0 and only with shutdownAfterJobFinishes; runtimeEnvYAML is YAML.
SPEC_REQUIRED = ("headGroupSpec",)
HEAD_REQUIRED = ("rayStartParams", "template")
WORKER_REQUIRED = ("groupName", "maxReplicas", "minReplicas", "rayStartParams", "template")
POD_SPEC_REQUIRED = ("containers",)
CONTAINER_REQUIRED = ("name",)
LIST_ITEM_REQUIRED = {"env": ("name",), "ports": ("containerPort",), "volumeMounts": ("name", "mountPath")}
START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
NAME_LIMIT = {"RayCluster": 53, "RayJob": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
GPU = "nvidia.com/gpu"

# A credential written into a file: an env var holding a literal value, or text that looks
# like a real key (AWS key ids, secret keys, Hugging Face tokens, private keys).
CREDENTIAL_NAME = re.compile(r"(^|_)(SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIALS?|API_KEY)(_|$)", re.I)
CREDENTIAL_TEXT = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{16,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def pinned(requirement_prefix: str, requirements: list[str]) -> str:
    """The exact version a requirement list pins for a package (e.g. `ray[` -> 2.60.0)."""
    for req in requirements:
        if req.split("==")[0].lower().startswith(requirement_prefix) and "==" in req:
            return req.split("==")[1].split(";")[0].strip()
    raise AssertionError(f"{requirement_prefix} is not pinned with == in pyproject.toml")


RAY_VERSION = pinned("ray[", PYPROJECT["project"]["dependencies"])
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"registry.example.com/speechmed:{VERSION}"
# Where the image keeps its copy of this repository (the KubeRay job's working_dir).
IMAGE_WORKDIR = re.search(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(encoding="utf-8"), flags=re.M).group(1)


# --- KubeRay checker ------------------------------------------------------------------------
def _missing(node: Any, keys: tuple[str, ...], where: str) -> list[str]:
    if not isinstance(node, dict):
        return [f"{where}: must be a mapping"]
    return [f"{where}.{key}: required" for key in keys if key not in node]


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def _container_problems(container: dict[str, Any], where: str) -> list[str]:
    problems = _missing(container, CONTAINER_REQUIRED, where)
    for field, keys in LIST_ITEM_REQUIRED.items():
        for i, item in enumerate(container.get(field) or []):
            problems += _missing(item, keys, f"{where}.{field}[{i}]")
    for i, env in enumerate(container.get("env") or []):
        secret = ((env.get("valueFrom") or {}).get("secretKeyRef"))
        if secret is not None:
            problems += _missing(secret, ("key",), f"{where}.env[{i}].valueFrom.secretKeyRef")
        if "value" in env and CREDENTIAL_NAME.search(str(env.get("name", ""))):
            problems.append(f"{where}.env[{i}] ({env.get('name')}): a credential written inline; "
                            "use valueFrom.secretKeyRef")
    if container.get("image") != IMAGE:
        problems.append(f"{where}.image: {container.get('image')!r}, expected the deploy/Dockerfile image {IMAGE!r}")
    return problems


def _gpu_problems(container: dict[str, Any], where: str, *, head: bool) -> list[str]:
    """Worker containers ask for GPUs (a limit; a request, if any, equal to it, as Kubernetes
    requires of extended resources) and mount /dev/shm; the head asks for none."""
    resources = container.get("resources") or {}
    limit, request = (resources.get("limits") or {}).get(GPU), (resources.get("requests") or {}).get(GPU)
    if head:
        return [f"{where}: the head is CPU-only, it must not ask for {GPU}"] if limit or request else []
    problems = []
    if not isinstance(limit, int) or limit < 1:
        problems.append(f"{where}.resources.limits: a GPU worker needs {GPU} >= 1, got {limit!r}")
    elif request is not None and request != limit:
        problems.append(f"{where}.resources: {GPU} request {request!r} differs from its limit {limit!r}")
    if "/dev/shm" not in {m.get("mountPath") for m in container.get("volumeMounts") or []}:
        problems.append(f"{where}.volumeMounts: no /dev/shm (Ray's object store, vLLM tensor parallelism)")
    return problems


def _group_problems(group: Any, required: tuple[str, ...], where: str, *, head: bool) -> list[str]:
    problems = _missing(group, required, where)
    if problems and not isinstance(group, dict):
        return problems
    params = group.get("rayStartParams") or {}
    problems += [f"{where}.rayStartParams.{k}: must be a string, got {v!r}" for k, v in params.items()
                 if not isinstance(v, str)]
    if "labels" in params:
        problems.append(f"{where}.rayStartParams.labels: not supported, use the group's labels")
    if group.get("resources") and any(params.get(k) for k in START_RESOURCE_PARAMS):
        problems.append(f"{where}: resources set both in rayStartParams and in resources")
    pod = (group.get("template") or {}).get("spec")
    problems += _missing(pod, POD_SPEC_REQUIRED, f"{where}.template.spec")
    if not _containers(group):
        problems.append(f"{where}.template.spec.containers: at least one container")
    for i, container in enumerate(_containers(group)):
        cwhere = f"{where}.template.spec.containers[{i}]"
        problems += _container_problems(container, cwhere) + _gpu_problems(container, cwhere, head=head)
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _replica_problems(group: dict[str, Any], where: str, autoscaling: bool) -> list[str]:
    counts = {k: group.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
    problems = [f"{where}.{k}: must be an integer, got {v!r}" for k, v in counts.items()
                if v is not None and not _is_int(v)]
    low, high = counts["minReplicas"], counts["maxReplicas"]
    if low is None or high is None:
        if not autoscaling:
            problems.append(f"{where}: minReplicas and maxReplicas must be set when autoscaling is off")
        return problems
    if not problems and not 0 <= low <= high:
        problems.append(f"{where}: need 0 <= minReplicas ({low}) <= maxReplicas ({high})")
    return problems


def cluster_spec_problems(spec: Any, where: str) -> list[str]:
    """A RayCluster spec (also a RayJob's rayClusterSpec) against the CRD and the operator."""
    problems = _missing(spec, SPEC_REQUIRED, where)
    if not isinstance(spec, dict):
        return problems
    if spec.get("rayVersion") != RAY_VERSION:
        problems.append(f"{where}.rayVersion: {spec.get('rayVersion')!r}, the image has Ray {RAY_VERSION}")
    if "headGroupSpec" in spec:
        problems += _group_problems(spec["headGroupSpec"], HEAD_REQUIRED, f"{where}.headGroupSpec", head=True)
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    groups = spec.get("workerGroupSpecs") or []
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(set(names)) != len(names):
        problems.append(f"{where}.workerGroupSpecs: group names must be unique, got {names}")
    for i, group in enumerate(groups):
        gwhere = f"{where}.workerGroupSpecs[{i}]"
        problems += _group_problems(group, WORKER_REQUIRED, gwhere, head=False)
        if isinstance(group, dict):
            problems += _replica_problems(group, gwhere, autoscaling)
    return problems


def _metadata_problems(doc: dict[str, Any]) -> list[str]:
    name = (doc.get("metadata") or {}).get("name")
    limit = NAME_LIMIT.get(doc.get("kind"), 53)
    if not isinstance(name, str) or not DNS1035.match(name) or len(name) > limit:
        return [f"metadata.name: {name!r} must be a DNS-1035 label of at most {limit} characters"]
    return []


def kuberay_problems(doc: Any) -> list[str]:
    """Everything wrong with a RayCluster or RayJob manifest, [] when it would be accepted."""
    if not isinstance(doc, dict):
        return ["the manifest must be a mapping"]
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion: {doc.get('apiVersion')!r}, expected ray.io/v1"]
    kind, spec = doc.get("kind"), doc.get("spec")
    problems = _metadata_problems(doc)
    if kind == "RayCluster":
        return problems + cluster_spec_problems(spec, "spec")
    if kind != "RayJob":
        return [*problems, f"kind: {kind!r}, expected RayCluster or RayJob"]
    if not isinstance(spec, dict) or "rayClusterSpec" not in spec:
        return [*problems, "spec.rayClusterSpec: required (this job brings its own cluster)"]
    problems += cluster_spec_problems(spec["rayClusterSpec"], "spec.rayClusterSpec")
    types = {"entrypoint": str, "runtimeEnvYAML": str, "shutdownAfterJobFinishes": bool,
             "ttlSecondsAfterFinished": int, "backoffLimit": int}
    problems += [f"spec.{k}: must be {t.__name__}, got {spec[k]!r}" for k, t in types.items()
                 if k in spec and not (_is_int(spec[k]) if t is int else isinstance(spec[k], t))]
    if _is_int(spec.get("ttlSecondsAfterFinished")) and spec["ttlSecondsAfterFinished"] < 0:
        problems.append("spec.ttlSecondsAfterFinished: must be >= 0")
    if "ttlSecondsAfterFinished" in spec and not spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.ttlSecondsAfterFinished: only with shutdownAfterJobFinishes: true")
    if not spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.shutdownAfterJobFinishes: must be true, or the GPU pods outlive the job")
    problems += entrypoint_problems(spec.get("entrypoint"))
    try:
        problems += runtime_env_problems(yaml.safe_load(spec.get("runtimeEnvYAML") or "{}"), "spec.runtimeEnvYAML")
    except yaml.YAMLError as exc:
        problems.append(f"spec.runtimeEnvYAML: not YAML: {exc}")
    return problems


# --- entrypoints, runtime_envs, secrets -------------------------------------------------
def paper_scale_config(path: Path) -> Any:
    """A shipped config parsed by the same function `speechmed run` uses (`load_config` reads
    the file, then `parse_config`), its corpora paths pointed at the test fixtures: the
    cluster's /data/speechmed does not exist here."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for source in raw["sources"]:
        source["path"] = str(FIXTURE_FOR_FORMAT[source["format"]])
    return parse_config(raw, base_dir=str(path.parent), origin=str(path))


def entrypoint_problems(entrypoint: Any, root: Path = REPO) -> list[str]:
    """`speechmed run CONFIG --run URI` (or `speechmed resume URI`): arguments the CLI
    accepts, a config of the repository `root` (the job's working_dir) that parses, and a
    run directory every node can reach (an object store)."""
    from typer.main import get_command

    from pipeline.cli import app

    if not isinstance(entrypoint, str) or not entrypoint.strip():
        return [f"entrypoint: {entrypoint!r} is not a command line"]
    argv = shlex.split(entrypoint)
    if argv[0] != "speechmed" or len(argv) < 2 or argv[1] not in ("run", "resume"):
        return [f"entrypoint: {entrypoint!r} must be `speechmed run ...` or `speechmed resume ...`"]
    try:
        params = get_command(app).get_command(None, argv[1]).make_context(argv[1], argv[2:]).params
    except Exception as exc:  # the CLI's own usage error (typer's vendored click)
        return [f"entrypoint: {entrypoint!r}: speechmed {argv[1]} refuses its arguments: {exc}"]
    run_dir = params.get("run_uri")
    problems = [] if str(run_dir).startswith(("s3://", "gs://")) else [
        f"entrypoint: run directory {run_dir!r} must be an object store every pod reaches (s3://...)"]
    if argv[1] == "run":
        config = root / params["config"]
        if not config.is_file():
            return [*problems, f"entrypoint: {params['config']} is not a config of this repository"]
        try:
            paper_scale_config(config)
        except ValueError as exc:
            problems.append(f"entrypoint: {params['config']} does not parse: {exc}")
    return problems


def runtime_env_problems(env: Any, where: str) -> list[str]:
    """Valid for Ray (its own RuntimeEnv validation) and installing nothing at job start.

    Ray checks that a local working_dir exists: "." (submitted from the repository root) and
    the image's copy of the repository are checked as this repository."""
    from ray.runtime_env import RuntimeEnv

    if not isinstance(env, dict):
        return [f"{where}: must be a mapping"]
    problems = [f"{where}.{key}: installs packages at job start; the image carries them" for key in
                ("pip", "uv", "conda", "container", "image_uri") if key in env]
    problems += [f"{where}.env_vars.{name}: a credential in the runtime_env" for name in env.get("env_vars") or {}
                 if CREDENTIAL_NAME.search(name)]
    here = {**env, "working_dir": str(REPO)} if env.get("working_dir") in (".", IMAGE_WORKDIR) else env
    try:
        RuntimeEnv(**here)
    except Exception as exc:  # Ray raises TypeError/ValueError for a bad field or type
        problems.append(f"{where}: Ray refuses it: {exc}")
    return problems


def credential_problems(text: str, where: str) -> list[str]:
    return [f"{where}: looks like a credential: {m.group(0)[:12]}..." for pattern in CREDENTIAL_TEXT
            for m in pattern.finditer(text)]


# --- Ray cluster launcher ---------------------------------------------------------------
def _commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    for key in keys:
        for command in config.get(key) or []:
            yield key, command
    for name, node in (config.get("available_node_types") or {}).items():
        for key in keys:
            for command in node.get(key) or []:
                yield f"{name}.{key}", command


def held_gpus(path: Path) -> tuple[float, int]:
    """GPUs a config holds at once (every actor starts with the run) and its largest
    tensor-parallel size (GPUs one actor needs on one node)."""
    config = paper_scale_config(path)
    total = sum(s.resources.actors * s.resources.num_gpus for s in config.stages)
    widest = max((int(s.params.get("engine", {}).get("tensor_parallel_size", 1)) for s in config.stages
                  if s.resources.num_gpus), default=0)
    return total, widest


def launcher_problems(config: Any) -> list[str]:
    """What `ray up` would refuse before it calls the cloud (Ray's prepare_config +
    validate_config, Ray 2.60's own schema and checks), plus this project's: a CPU-only head,
    GPU worker types big enough for the shipped configs, shell commands that parse, and the
    image of deploy/Dockerfile."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError: Ray's own messages
        return [f"ray up refuses it: {str(exc).splitlines()[0]}"]
    types, problems = config["available_node_types"], []
    head = types[config["head_node_type"]]["resources"]
    if head.get("GPU") or head.get("CPU", 1) != 0:
        problems.append(f"head node type: must be CPU-only and run no actors (CPU: 0), got {head}")
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    problems += [f"{n}: a worker type without GPUs" for n, t in workers.items() if not t["resources"].get("GPU")]
    problems += [f"{n}: min_workers > max_workers" for n, t in workers.items()
                 if t.get("min_workers", 0) > t.get("max_workers", 0)]
    for path in (REPO / "configs").glob("paper*.yaml"):
        total, widest = held_gpus(path)
        biggest = max((t["resources"].get("GPU", 0) for t in workers.values()), default=0)
        reachable = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0) for t in workers.values())
        if biggest < widest:
            problems.append(f"{path.name}: a tensor-parallel actor needs {widest} GPUs of one node, "
                            f"largest node has {biggest}")
        if reachable < total:
            problems.append(f"{path.name}: holds {total:g} GPUs at once, the worker types reach {reachable}")
    for where, command in _commands(config):
        check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        if check.returncode:
            problems.append(f"{where}: not valid shell: {command!r}: {check.stderr.strip()}")
    if (config.get("docker") or {}).get("image") != IMAGE:
        problems.append(f"docker.image: {(config.get('docker') or {}).get('image')!r}, expected {IMAGE!r}")
    return problems


# --- tests: the shipped files ---------------------------------------------------------------
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_and_has_no_credentials(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert isinstance(yaml.safe_load(text), dict)
    assert credential_problems(text, str(path)) == []


def test_every_deploy_file_is_free_of_credentials() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert {DOCKERFILE, RAYJOB, RAYCLUSTER, CLUSTER, RUNTIME_ENV} <= set(files)
    assert [line for p in files for line in credential_problems(p.read_text(encoding="utf-8"), str(p))] == []


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_kuberay_manifest_meets_the_crd(path: Path) -> None:
    assert kuberay_problems(load(path)) == []


def test_rayjob_runs_the_paper_config_on_enough_gpus() -> None:
    spec = load(RAYJOB)["spec"]
    assert shlex.split(spec["entrypoint"])[:3] == ["speechmed", "run", "configs/paper.yaml"]
    # The working_dir the entrypoint's relative config path resolves in is the image's copy.
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/opt/speechmed"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "WORKDIR /opt/speechmed" in dockerfile and "COPY configs/ configs/" in dockerfile
    gpus = sum(g["replicas"] * _containers(g)[0]["resources"]["limits"][GPU]
               for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    total, widest = held_gpus(REPO / "configs" / "paper.yaml")
    assert total > 0 and widest > 1 and gpus >= total
    assert all(_containers(g)[0]["resources"]["limits"][GPU] >= widest
               for g in spec["rayClusterSpec"]["workerGroupSpecs"])


def test_cluster_launcher_config_is_valid() -> None:
    config = load(CLUSTER)
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type"):
        assert key in config, key
    assert launcher_problems(config) == []


def test_runtime_env_is_valid_and_installs_nothing() -> None:
    env = load(RUNTIME_ENV)
    assert runtime_env_problems(env, "runtime_env.yaml") == []
    assert env["working_dir"] == "."
    assert set(env["env_vars"]) >= {"VLLM_CACHE_ROOT"} and "RAY_AUTH_MODE" not in env["env_vars"]


def test_dockerfile_pins_what_the_adapters_were_written_for() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    for name in ("COSYVOICE_COMMIT", "MATCHA_COMMIT", "FISH_SPEECH_COMMIT"):
        assert re.fullmatch(r"[0-9a-f]{40}", args[name]), name
    # The fish-speech commit the adapter names (before S2); CosyVoice after 622a3a1 (ace7c47).
    adapter = (REPO / "actors" / "engines" / "fishspeech_engine.py").read_text(encoding="utf-8")
    fish_pin = re.search(r"Written against commit (\w{7})", adapter)
    assert fish_pin and args["FISH_SPEECH_COMMIT"].startswith(fish_pin.group(1))
    assert args["COSYVOICE_COMMIT"].startswith("ace7c47") and "submodule update --init third_party/Matcha-TTS" in text
    # Python of pyproject, the CUDA vLLM of the gpu extra, the engines' imports, one resolver run.
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12" and "python3.11 -m venv" in text
    assert pinned("vllm", PYPROJECT["project"]["optional-dependencies"]["gpu"]) == "0.32.0"
    assert 'pip install ".[gpu,train]" -r deploy/requirements-tts.txt' in text
    requirements = [line.split("#")[0].strip() for line in (DEPLOY / "requirements-tts.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", r) for r in requirements), requirements
    assert {"funasr", "onnxruntime-gpu", "HyperPyYAML", "openai-whisper"} <= {r.split("==")[0] for r in requirements}
    # Weights are mounted or synced, never baked in.
    assert not re.search(r"hf download|huggingface-cli download|snapshot_download|COPY\s+\S*models", text)
    assert f'org.opencontainers.image.version="{VERSION}"' in text


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("paper*.yaml")), ids=lambda p: p.name)
def test_paper_configs_use_the_image(path: Path) -> None:
    """The speech engines of the shipped configs point at the image's checkouts and at
    checkpoints under /models, every LLM engine at /models too: nothing the image lacks."""
    clones = set(re.findall(r"git clone \S+ \S+ (/opt/\S+)", DOCKERFILE.read_text(encoding="utf-8")))
    assert clones == {"/opt/CosyVoice", "/opt/fish-speech"}
    engines = [engine for stage in paper_scale_config(path).stages for key in ("engine", "random_timbre_engine")
               if isinstance(engine := stage.params.get(key), dict)]
    speech = [e for e in engines if e.get("kind") in ("cosyvoice2", "fishspeech")]
    assert {e["kind"] for e in speech} == {"cosyvoice2", "fishspeech"}
    assert {e["repo_path"] for e in speech} <= clones
    assert all(str(e.get("model_dir", e.get("model"))).startswith("/models/") for e in engines), engines


# --- tests: broken copies are rejected --------------------------------------------------
KeyPath = tuple[str | int, ...]


def _at(doc: dict[str, Any], path: KeyPath) -> tuple[Any, str | int]:
    """The mapping or list holding the last key of `path`."""
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


def _delete(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        node, key = _at(doc, path)
        del node[key]
    return edit


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def edit(doc: dict[str, Any]) -> None:
        node, key = _at(doc, tuple(path))
        node[key] = value
    return edit


HEAD = ("spec", "headGroupSpec")
HEAD_CONTAINER = (*HEAD, "template", "spec", "containers", 0)
WORKER0 = ("spec", "workerGroupSpecs", 0)
WORKER0_CONTAINER = (*WORKER0, "template", "spec", "containers", 0)
JOB_CLUSTER = ("spec", "rayClusterSpec")
BROKEN_RAYCLUSTER = {
    "apiVersion": (_set("apiVersion", "ray.io/v1alpha1"), "apiVersion"),
    "no headGroupSpec": (_delete(*HEAD), "spec.headGroupSpec: required"),
    "no head rayStartParams": (_delete(*HEAD, "rayStartParams"), "headGroupSpec.rayStartParams: required"),
    "no head containers": (_delete(*HEAD, "template", "spec", "containers"), "template.spec.containers: required"),
    "head container unnamed": (_delete(*HEAD_CONTAINER, "name"), "containers[0].name: required"),
    "no groupName": (_delete(*WORKER0, "groupName"), "workerGroupSpecs[0].groupName: required"),
    "no maxReplicas": (_delete(*WORKER0, "maxReplicas"), "workerGroupSpecs[0].maxReplicas: required"),
    "no worker rayStartParams": (_delete(*WORKER0, "rayStartParams"), "workerGroupSpecs[0].rayStartParams: required"),
    "no worker template": (_delete(*WORKER0, "template"), "workerGroupSpecs[0].template: required"),
    "non-string start param": (_set(*HEAD, "rayStartParams", "num-cpus", 0), "must be a string"),
    "start param labels": (_set(*HEAD, "rayStartParams", "labels", "a=b"), "rayStartParams.labels"),
    "resources twice": (_set(*HEAD, "resources", {"CPU": "1"}), "both in rayStartParams and in resources"),
    "min above max": (_set(*WORKER0, "minReplicas", 99), "minReplicas (99) <= maxReplicas"),
    "replicas as text": (_set(*WORKER0, "maxReplicas", "8"), "maxReplicas: must be an integer"),
    "no GPU limit": (_delete(*WORKER0_CONTAINER, "resources", "limits", GPU), f"needs {GPU} >= 1"),
    "GPU request != limit": (_set(*WORKER0_CONTAINER, "resources", "requests", GPU, 2), "differs from its limit"),
    "GPU on the head": (_set(*HEAD_CONTAINER, "resources", "limits", GPU, 1), "CPU-only"),
    "no /dev/shm": (_set(*WORKER0_CONTAINER, "volumeMounts", []), "no /dev/shm"),
    "inline secret": (_set(*WORKER0_CONTAINER, "env", 1, {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}),
                      "credential written inline"),
    "secretKeyRef without key": (_delete(*WORKER0_CONTAINER, "env", 0, "valueFrom", "secretKeyRef", "key"),
                                 "secretKeyRef.key: required"),
    "env without name": (_delete(*WORKER0_CONTAINER, "env", 0, "name"), "env[0].name: required"),
    "mount without path": (_delete(*WORKER0_CONTAINER, "volumeMounts", 0, "mountPath"),
                           "volumeMounts[0].mountPath: required"),
    "other image": (_set(*WORKER0_CONTAINER, "image", "rayproject/ray:2.60.0"), "deploy/Dockerfile image"),
    "other Ray": (_set("spec", "rayVersion", "2.52.0"), "rayVersion"),
    "bad name": (_set("metadata", "name", "SpeechMed_cluster"), "DNS-1035"),
}
BROKEN_RAYJOB = {
    "no rayClusterSpec": (_delete(*JOB_CLUSTER), "spec.rayClusterSpec: required"),
    "no head in the job's cluster": (_delete(*JOB_CLUSTER, "headGroupSpec"),
                                     "rayClusterSpec.headGroupSpec: required"),
    "no worker groupName": (_delete(*JOB_CLUSTER, "workerGroupSpecs", 0, "groupName"), "groupName: required"),
    "fixed size without min": (_delete(*JOB_CLUSTER, "workerGroupSpecs", 0, "minReplicas"), "minReplicas: required"),
    "no GPU limit": (_delete(*JOB_CLUSTER, "workerGroupSpecs", 0, "template", "spec", "containers", 0, "resources",
                             "limits", GPU), f"needs {GPU} >= 1"),
    "keeps its cluster": (_set("spec", "shutdownAfterJobFinishes", False), "shutdownAfterJobFinishes"),
    "ttl as text": (_set("spec", "ttlSecondsAfterFinished", "300"), "must be int"),
    "missing config": (_set("spec", "entrypoint", "speechmed run configs/nope.yaml --run s3://b/r"),
                       "not a config of this repository"),
    "local run dir": (_set("spec", "entrypoint", "speechmed run configs/paper.yaml --run /tmp/run1"), "object store"),
    "no --run": (_set("spec", "entrypoint", "speechmed run configs/paper.yaml"), "refuses its arguments"),
    "not speechmed": (_set("spec", "entrypoint", "python -m pipeline.cli run configs/paper.yaml --run s3://b/r"),
                      "must be `speechmed run"),
    "pip at job start": (_set("spec", "runtimeEnvYAML", "working_dir: /opt/speechmed\npip: [vllm]\n"),
                         "installs packages"),
    "runtime env not YAML": (_set("spec", "runtimeEnvYAML", "working_dir: [unclosed\n"), "not YAML"),
    "missing working_dir": (_set("spec", "runtimeEnvYAML", "working_dir: /no/such/dir\n"), "Ray refuses it"),
    "job name too long": (_set("metadata", "name", "speechmed-" + "x" * 40), "at most 47 characters"),
}


@pytest.mark.parametrize("case", BROKEN_RAYCLUSTER, ids=str)
def test_broken_raycluster_is_rejected(case: str) -> None:
    edit, expected = BROKEN_RAYCLUSTER[case]
    doc = load(RAYCLUSTER)
    edit(doc)
    problems = kuberay_problems(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("case", BROKEN_RAYJOB, ids=str)
def test_broken_rayjob_is_rejected(case: str) -> None:
    edit, expected = BROKEN_RAYJOB[case]
    doc = load(RAYJOB)
    edit(doc)
    problems = kuberay_problems(doc)
    assert any(expected in p for p in problems), problems


def test_a_config_that_does_not_parse_is_rejected(tmp_path: Path) -> None:
    """The entrypoint's config is parsed, not just found: a stage with an engine on fewer
    GPUs than its tensor-parallel size is refused as `speechmed run` would refuse it."""
    raw = load(REPO / "configs" / "paper.yaml")
    next(s for s in raw["stages"] if s["kind"] == "rewrite")["resources"]["num_gpus"] = 2
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broken.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    problems = entrypoint_problems("speechmed run configs/broken.yaml --run s3://b/r", root=tmp_path)
    assert any("does not parse" in p and "tensor_parallel_size" in p for p in problems), problems
    assert entrypoint_problems("speechmed run configs/paper.yaml --run s3://b/r") == []
    assert entrypoint_problems("speechmed resume s3://b/r") == []


NODE_TYPES = ("available_node_types",)
BROKEN_LAUNCHER = {
    "no provider": (_delete("provider"), "ray up refuses it"),
    "unknown head type": (_set("head_node_type", "nope"), "ray up refuses it"),
    "typo in a node type": (_set(*NODE_TYPES, "gpu_h100_x8", "min_worker", 1), "ray up refuses it"),
    "GPU head": (_set(*NODE_TYPES, "head_cpu", "resources", {"CPU": 16, "GPU": 1}), "CPU-only"),
    "CPU worker": (_set(*NODE_TYPES, "gpu_h100_x1", "resources", {"CPU": 16}), "a worker type without GPUs"),
    "no 8-GPU node": (_delete(*NODE_TYPES, "gpu_h100_x8"), None),
    "too few GPUs": (_set(*NODE_TYPES, "gpu_h100_x8", "max_workers", 1), None),
    "bad shell": (_set("setup_commands", ["test -f x || { echo unclosed"]), "not valid shell"),
    "other image": (_set("docker", "image", "rayproject/ray:2.60.0-gpu"), "docker.image"),
}
# Cases whose edit needs a second step: with only 1-GPU nodes left the 72B rewriter (TP 4)
# cannot be placed; with one 8-GPU node and the 1-GPU ones, 8 + 8 = 16 GPUs, fewer than
# paper.yaml holds.
SECOND_EDIT = {
    "no 8-GPU node": (_delete(*NODE_TYPES, "gpu_a100_x8"), "needs 4 GPUs of one node, largest node has 1"),
    "too few GPUs": (_delete(*NODE_TYPES, "gpu_a100_x8"), "GPUs at once, the worker types reach 16"),
}


@pytest.mark.parametrize("case", BROKEN_LAUNCHER, ids=str)
def test_broken_launcher_config_is_rejected(case: str) -> None:
    edit, expected = BROKEN_LAUNCHER[case]
    config = load(CLUSTER)
    edit(config)
    if case in SECOND_EDIT:
        edit, expected = SECOND_EDIT[case]
        edit(config)
    problems = launcher_problems(config)
    assert any(expected in p for p in problems), problems


def test_runtime_env_with_pip_or_a_bad_field_is_rejected() -> None:
    env = load(RUNTIME_ENV)
    assert any("installs packages" in p for p in runtime_env_problems({**env, "pip": ["numpy"]}, "env"))
    assert any("Ray refuses it" in p for p in runtime_env_problems({**env, "env_vars": {"A": 1}}, "env"))
    assert any("credential" in p for p in runtime_env_problems(
        {**env, "env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}, "env"))


def test_credential_scan_finds_keys_in_text() -> None:
    leaked = "env:\n  AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n  id: AKIAIOSFODNN7EXAMPLE\n"
    assert len(credential_problems(leaked, "x")) == 2
    assert credential_problems("--from-literal=AWS_SECRET_ACCESS_KEY=...", "x") == []
