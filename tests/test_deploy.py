"""The Kubernetes manifests in deploy/: valid for the Kubernetes API (checked offline with
kubernetes-validate's bundled schemas) and consistent with the server they run."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import ROOT

from emotion_server import ops
from emotion_server.config import ENV_NAMES, Settings

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def _documents() -> dict[str, dict]:
    documents = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return _documents()


@pytest.mark.parametrize("path", MANIFESTS, ids=[path.name for path in MANIFESTS])
def test_manifest_is_valid_for_kubernetes(path):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (in the [dev] extra)"
    )
    version = kubernetes_validate.latest_version()
    for document in yaml.safe_load_all(path.read_text()):
        # Strict: unknown fields (typos) fail too. Raises ValidationError on any problem.
        kubernetes_validate.validate(document, version, strict=True)


def test_the_expected_resources_are_there(manifests):
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(manifests)


def _container(manifests) -> dict:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_probes_use_readyz_and_healthz(manifests):
    container = _container(manifests)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["PORT"]) == ports["http"]


def test_resources_have_requests_and_limits(manifests):
    resources = _container(manifests)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_service_and_hpa_point_at_the_deployment(manifests):
    deployment, service, hpa = (
        manifests["Deployment"],
        manifests["Service"],
        manifests["HorizontalPodAutoscaler"],
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # The autoscaler alone sets the count: a Deployment's own would reset it at each apply.
    assert "replicas" not in deployment["spec"]


def test_pod_runs_as_the_images_non_root_user(manifests):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    container = _container(manifests)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts  # metrics files, gunicorn's worker and control files


def test_shutdown_fits_in_the_grace_period(manifests):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    sleep = int(_container(manifests)["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > sleep + ops.GRACEFUL_TIMEOUT_S


def test_every_server_variable_in_the_manifest_is_a_setting(manifests):
    known = {f"EMOTION_{name.upper()}" for name in Settings.__dataclass_fields__}
    known |= {name for names in ENV_NAMES.values() for name in names}
    known |= {"PROMETHEUS_MULTIPROC_DIR", "TMPDIR"}
    for item in _container(manifests)["env"]:
        assert item["name"] in known, item["name"]
