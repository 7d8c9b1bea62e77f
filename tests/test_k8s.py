"""The KubeRay manifests, checked offline: pod templates against Kubernetes' own schema, the KubeRay
fields we use against the ray.io/v1 field names, serveConfigV2 against Ray's Serve schema, and the
RayJob's entrypoint against the job's parser. Each check is also shown to fail on a typo. What is
reachable is pinned too: Ray's token auth from a Secret on every container that talks to Ray, the
app's API key on the RayService's pods."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from cluster.autoscaling import AUTOSCALING, serve_autoscaling_config
from cluster.serving import SERVE_ENV
from jobs.embed_corpus import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[1]


def _load_render():
    """k8s/render.py is a repo-time script beside the manifests, not an installed module."""
    spec = importlib.util.spec_from_file_location("k8s_render", ROOT / "k8s" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


k8s = _load_render()
IMAGE = "registry.example.com/rayembed:0.1.0"
KUBERNETES = "1.33.0"

# ray.io/v1 fields (KubeRay's CRDs, which no PyPI package ships), for the parts the manifests use.
# Pod templates are checked against Kubernetes' own schema instead.
GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = GROUP | {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "idleTimeoutSeconds", "scaleStrategy", "suspend"}
CLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions", "upgradeStrategy"}
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTOSCALER = {"version", "upscalingMode", "idleTimeoutSeconds", "resources", "image", "imagePullPolicy", "env", "envFrom",
              "securityContext", "volumeMounts"}
JOB_SPEC = {"entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit", "rayClusterSpec",
            "clusterSelector", "runtimeEnvYAML", "submissionMode", "submitterPodTemplate", "submitterConfig", "suspend",
            "activeDeadlineSeconds", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "metadata",
            "managedBy", "deletionStrategy"}
SERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy", "excludeHeadPodFromServeSvc",
                "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}


def load(name: str) -> dict:
    """A manifest as `kubectl apply` gets it after `envsubst '$RAYEMBED_IMAGE'`."""
    return yaml.safe_load((ROOT / "k8s" / name).read_text().replace("${RAYEMBED_IMAGE}", IMAGE))


MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob", "rayservice.yaml": "RayService"}


def cluster_spec_of(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[manifest["kind"]]()


def unknown_fields(manifest: dict) -> list[str]:
    """Fields the ray.io/v1 CRDs don't have, as dotted paths."""
    spec = manifest["spec"]
    top = {"RayCluster": CLUSTER_SPEC, "RayJob": JOB_SPEC, "RayService": SERVICE_SPEC}[manifest["kind"]]
    found = [f"spec.{k}" for k in spec if k not in top]
    cluster = cluster_spec_of(manifest)
    found += [f"cluster.{k}" for k in cluster if k not in CLUSTER_SPEC]
    found += [f"autoscalerOptions.{k}" for k in cluster.get("autoscalerOptions", {}) if k not in AUTOSCALER]
    found += [f"authOptions.{k}" for k in cluster.get("authOptions", {}) if k not in AUTH_OPTIONS]
    found += [f"headGroupSpec.{k}" for k in cluster["headGroupSpec"] if k not in GROUP]
    found += [f"workerGroupSpecs.{k}" for group in cluster["workerGroupSpecs"] for k in group if k not in WORKER_GROUP]
    return found


def pod_templates(manifest: dict) -> list[dict]:
    cluster = cluster_spec_of(manifest)
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


def validate_pod_template(template: dict) -> None:
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "rayembed"}, "template": template}
    kubernetes_validate.validate(wrapped, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_are_ray_io_v1_with_known_fields_and_valid_pod_templates(name):
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == MANIFESTS[name]
    assert unknown_fields(manifest) == []
    templates = pod_templates(manifest)
    assert len(templates) == 3  # head, cpu, gpu
    for template in templates:
        validate_pod_template(template)
        container = template["spec"]["containers"][0]
        assert container["image"] == IMAGE
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert all(env.get(k) == v for k, v in SERVE_ENV.items())
        # S3 keys come from a Secret, never inline.
        assert container["envFrom"] == [{"secretRef": {"name": "rayembed-s3"}}]
        assert not any("SECRET" in k or "KEY_ID" in k for k in env)


def test_a_typo_fails_the_checks():
    manifest = load("raycluster.yaml")
    typo = copy.deepcopy(manifest)
    gpu = typo["spec"]["workerGroupSpecs"][1]["template"]
    gpu["spec"]["toleration"] = gpu["spec"].pop("tolerations")
    with pytest.raises(kubernetes_validate.ValidationError, match="toleration"):
        validate_pod_template(gpu)
    typo = copy.deepcopy(manifest)
    typo["spec"]["enableInTreeAutoScaling"] = typo["spec"].pop("enableInTreeAutoscaling")
    assert unknown_fields(typo) == ["spec.enableInTreeAutoScaling", "cluster.enableInTreeAutoScaling"]
    typo = copy.deepcopy(manifest)
    typo["spec"]["authOptions"]["secretname"] = typo["spec"]["authOptions"].pop("secretName")
    assert unknown_fields(typo) == ["authOptions.secretname"]


TOKEN_SECRET = "rayembed-ray-token"


def envs(node) -> list[list[dict]]:
    """Every container's env list anywhere in a manifest (pod templates, the RayJob's submitter)."""
    if isinstance(node, dict):
        found = [node["env"]] if isinstance(node.get("env"), list) and "image" in node else []
        return found + [e for v in node.values() for e in envs(v)]
    return [e for v in node for e in envs(v)] if isinstance(node, list) else []


def holds_token(env: list[dict]) -> bool:
    by_name = {e["name"]: e for e in env}
    return by_name.get("RAY_AUTH_MODE", {}).get("value") == "token" and \
        by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom") == {"secretKeyRef": {"name": TOKEN_SECRET, "key": "auth_token"}}


@pytest.mark.parametrize("name", MANIFESTS)
def test_ray_runs_with_token_auth_from_a_secret_on_every_container(name):
    manifest = load(name)
    cluster = cluster_spec_of(manifest)
    # KubeRay's own calls to the dashboard (submission, Serve config, status) take the token from here.
    assert cluster["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    containers = envs(manifest)
    assert len(containers) == (4 if manifest["kind"] == "RayJob" else 3)  # head, cpu, gpu (+ the submitter)
    assert all(holds_token(env) for env in containers)
    assert "disabled" not in (ROOT / "k8s" / name).read_text()
    # The dashboard and Jobs API face the pod network only with the token in front of them.
    if cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") != "127.0.0.1":
        assert cluster["authOptions"]["mode"] == "token"


def test_the_job_submitter_holds_the_token_and_no_s3_keys():
    template = load("rayjob.yaml")["spec"]["submitterPodTemplate"]
    validate_pod_template(template)
    [container] = template["spec"]["containers"]
    assert container["image"] == IMAGE and holds_token(container["env"]) and "envFrom" not in container


def test_the_service_pods_hold_the_apps_api_key():
    key = {"name": "RAYEMBED_API_KEY", "valueFrom": {"secretKeyRef": {"name": "rayembed-api-key", "key": "api_key"}}}
    assert all(key in env for env in envs(load("rayservice.yaml")))
    assert not any(key in env for name in ("raycluster.yaml", "rayjob.yaml") for env in envs(load(name)))


def test_cluster_shape():
    cluster = load("raycluster.yaml")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == AUTOSCALING.idle_timeout_s
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no work on the head
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert all(g["minReplicas"] == 0 < g["maxReplicas"] for g in groups.values())
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_generated_manifests_are_current():
    assert k8s.main(["--check"]) == 0
    assert cluster_spec_of(load("rayjob.yaml")) == load("raycluster.yaml")["spec"]


def test_serve_config_v2_is_the_apps_config_and_validates():
    service = load("rayservice.yaml")["spec"]
    served = yaml.safe_load(service["serveConfigV2"])
    schema = ServeDeploySchema.parse_obj(served)
    ours = yaml.safe_load((ROOT / "serve_apps" / "config.yaml").read_text())["applications"]
    for app, local in zip(served["applications"], ours):
        deployments = app.pop("deployments")
        assert app == {k: v for k, v in local.items() if k != "deployments"}
        assert [d["ray_actor_options"] for d in deployments] == [{**d["ray_actor_options"], **k8s.GPU_REPLICA} for d in local["deployments"]]
    AutoscalingConfig(**serve_autoscaling_config())
    for app in schema.applications:
        module, attr = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    # Only replicas for the GPU group; one GPU node stays up so a first request does not wait.
    gpu = [g for g in service["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["minReplicas"] == 1


def test_rayjob_runs_the_job_module_with_arguments_its_parser_takes():
    job = load("rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.embed_corpus"]
    config = config_from_args(build_parser().parse_args(argv[3:]))
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.gpus_per_actor == 1 and config.max_actors and config.resume
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[3:], "--gpu-per-actor", "1"])


def test_image_recipe_is_ray_2_60_gpu_with_onnxruntime_gpu():
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    # One CUDA major (13) for the base image, torch's wheel and onnxruntime-gpu (k8s/Dockerfile says why).
    assert "FROM rayproject/ray:2.60.0-py311-cu130" in dockerfile
    assert '"torch==2.13.0"' in dockerfile and "download.pytorch.org/whl/cpu" not in dockerfile
    assert '"onnxruntime-gpu==1.31.*"' in dockerfile and "pip uninstall -y onnxruntime" in dockerfile
