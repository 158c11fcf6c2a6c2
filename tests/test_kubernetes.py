"""Issue 16's Kubernetes manifests (deploy/kubernetes/): valid against the Kubernetes schemas
(offline, kubernetes-validate), consistent with each other, and — run as the pods would run
them, on 127.0.0.1 — a Bytewax cluster that forms, spreads the feeds and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.servers import Sink, WsServer, feed_handler
from support.service import ROOT, free_port, http_get
from support.wait import wait_until

MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run (PDB's unhealthyPodEvictionPolicy is beta since 1.27,
# on by default) and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NAMESPACE = "ingest-test"
MEASURED_PEAK_RSS_MIB = 61  # README, Performance


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def kustomization() -> dict[str, Any]:
    return load("kustomization.yaml")[0]


def resources() -> dict[str, dict[str, Any]]:
    """Every object kustomization.yaml lists, by kind/name."""
    objects = {}
    for name in kustomization()["resources"]:
        for doc in load(name):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def statefulset() -> dict[str, Any]:
    return resources()["StatefulSet/ws-ingest"]


def container(name: str, init: bool = False) -> dict[str, Any]:
    spec = statefulset()["spec"]["template"]["spec"]
    found: dict[str, Any] = next(
        c for c in spec["initContainers" if init else "containers"] if c["name"] == name)
    return found


def env_of(spec: dict[str, Any], pod: str) -> dict[str, str]:
    """The environment Kubernetes gives a container of pod `pod`: HOSTNAME, the ConfigMaps of
    envFrom (the optional Secret is absent here), then `env` with the downward API resolved."""
    env = {"HOSTNAME": pod}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            configmap = resources()[f"ConfigMap/{source['configMapRef']['name']}"]
            env.update(configmap["data"])
        else:
            assert source["secretRef"]["optional"] is True, source
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def container_port(name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container("ws-ingest")["ports"]}
    return int(ports[name])


def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    listed = set(kustomization()["resources"])
    present = {path.name for path in MANIFESTS.glob("*.yaml")}
    # Every manifest is applied by kustomize, except the PodMonitor (a CRD, checked below).
    assert present - listed == {"kustomization.yaml", "podmonitor.yaml"}
    kinds = {key.split("/")[0] for key in resources()}
    assert kinds == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    for version in KUBERNETES_VERSIONS:
        for key, obj in resources().items():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(f"{key} against Kubernetes {version}: {error}") from None


def test_the_statefulset_follows_bytewax_conventions() -> None:
    sts = statefulset()
    replicas = sts["spec"]["replicas"]
    init_env = env_of(container("hostfile", init=True), "ws-ingest-0")
    main_env = env_of(container("ws-ingest"), "ws-ingest-0")
    assert init_env["BYTEWAX_REPLICAS"] == str(replicas), "BYTEWAX_REPLICAS must be replicas"
    assert main_env["BYTEWAX_POD_NAME"] == "ws-ingest-0"
    assert main_env["BYTEWAX_STATEFULSET_NAME"] == init_env["BYTEWAX_STATEFULSET_NAME"] \
        == sts["metadata"]["name"]
    assert main_env["BYTEWAX_HOSTFILE_PATH"] == init_env["BYTEWAX_HOSTFILE_PATH"]
    mounts = {m["name"]: m["mountPath"] for m in container("ws-ingest")["volumeMounts"]}
    assert Path(main_env["BYTEWAX_HOSTFILE_PATH"]).parent == Path(mounts["bytewax"])
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}

    cluster = resources()[f"Service/{sts['spec']['serviceName']}"]
    assert cluster["spec"]["clusterIP"] == "None"
    assert cluster["spec"]["publishNotReadyAddresses"] is True
    assert init_env["CLUSTER_SERVICE"] == cluster["metadata"]["name"]
    assert int(init_env["CLUSTER_PORT"]) == cluster["spec"]["ports"][0]["port"] \
        == container_port("cluster")


def test_probes_ports_and_scrape_targets_agree() -> None:
    main = container("ws-ingest")
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    http = container_port("http")
    assert env_of(main, "ws-ingest-0")["POD_METRICS_PORT"] == str(http)

    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    metrics = resources()["Service/ws-ingest-metrics"]
    assert metrics["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(http),
        "prometheus.io/path": "/metrics"}
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert metrics["spec"]["ports"][0]["targetPort"] == "http"
    for service in (metrics, resources()["Service/ws-ingest-cluster"]):
        assert service["spec"]["selector"].items() <= labels.items()
    pdb = resources()["PodDisruptionBudget/ws-ingest"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1

    # The PodMonitor example: no schema for the CRD here, so its shape is checked by hand.
    (monitor,) = load("podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s"}]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_security_resources_and_grace_period() -> None:
    spec = statefulset()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert spec["automountServiceAccountToken"] is False
    # Service links would put *_PORT variables of other Services into the environment.
    assert spec["enableServiceLinks"] is False
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}, c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    resources_ = container("ws-ingest")["resources"]
    assert mebibytes(resources_["limits"]["memory"]) >= 4 * MEASURED_PEAK_RSS_MIB
    assert mebibytes(resources_["requests"]["memory"]) >= 2 * MEASURED_PEAK_RSS_MIB
    shutdown_s = int(env_of(container("ws-ingest"), "ws-ingest-0")
                     ["INGEST_SHUTDOWN_TIMEOUT_MS"]) / 1000
    assert spec["terminationGracePeriodSeconds"] >= 3 * shutdown_s


class Pod:
    """One pod's main container, run as Kubernetes would: its command with its environment."""

    def __init__(self, name: str, env: dict[str, str], command: list[str], workdir: Path):
        self.name = name
        self.port = int(env["POD_METRICS_PORT"])
        self.log = workdir / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "BYTEWAX_"))}
        # `python` in the command is this interpreter; the image's WORKDIR has no .env file.
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        base["PYTHONPATH"] = str(ROOT)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env={**base, **env}, cwd=workdir,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def get(self, path: str) -> int:
        try:
            return http_get(f"http://127.0.0.1:{self.port}{path}", timeout=2)[0]
        except OSError:
            return 0

    def feeds_up(self) -> set[str]:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        return {sample.labels["source"]
                for family in text_string_to_metric_families(body.decode())
                for sample in family.samples
                if sample.name == "ingest_source_up" and sample.value == 1}

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for pod in started:
        if pod.process.poll() is None:
            pod.process.kill()
            pod.process.wait()


def test_the_pods_form_a_cluster_spread_the_feeds_and_stop_on_sigterm(
        tmp_path: Path, sink: Sink, servers: Callable[..., WsServer], pods: list[Pod]) -> None:
    sts = statefulset()
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2

    # The init container's script, as written, builds the hostfile.
    init = container("hostfile", init=True)
    hostfile = tmp_path / "hostfile.txt"
    init_env = {**env_of(init, "ws-ingest-0"), "BYTEWAX_HOSTFILE_PATH": str(hostfile)}
    subprocess.run(init["command"], env={"PATH": os.environ["PATH"], **init_env}, check=True,
                   capture_output=True, timeout=10)
    names = hostfile.read_text().split()
    assert names == [f"ws-ingest-{i}.ws-ingest-cluster.{NAMESPACE}.svc:9999"
                     for i in range(replicas)]
    # Here the pods' DNS names are 127.0.0.1 ports.
    mapped = tmp_path / "mapped" / "hostfile.txt"
    mapped.parent.mkdir()
    mapped.write_text("".join(f"127.0.0.1:{free_port()}\n" for _ in names))

    feed_names = [f"k8s-{i}" for i in range(2 * replicas)]
    feeds = [servers(feed_handler(10**6, name=name, interval=0.01)) for name in feed_names]
    sources = [{"name": n, "url": f.url} for n, f in zip(feed_names, feeds, strict=True)]
    main = container("ws-ingest")
    for i in range(replicas):
        pod_name = f"ws-ingest-{i}"
        env = env_of(main, pod_name)
        env.update({
            # What differs from a real pod: peers on 127.0.0.1, one host for every pod.
            "INGEST_SOURCES": json.dumps(sources), "INGEST_SINK_URL": sink.url,
            "BYTEWAX_HOSTFILE_PATH": str(mapped), "POD_METRICS_PORT": str(free_port()),
            "INGEST_METRICS_HOST": "127.0.0.1",
            # The pod's own volume (its volumeClaimTemplate) at the manifest's path.
            "INGEST_SPOOL_DIR": str(tmp_path / "volumes" / pod_name / "spool"),
        })
        assert env_of(main, pod_name)["INGEST_SPOOL_DIR"] == {
            m["name"]: m["mountPath"] for m in main["volumeMounts"]}["spool"]
        workdir = tmp_path / pod_name
        workdir.mkdir()
        pods.append(Pod(pod_name, env, main["command"], workdir))

    def all_ready() -> bool:
        for pod in pods:
            assert pod.process.poll() is None, f"{pod.name} exited:\n{pod.log.read_text()}"
        return all(pod.get("/readyz") == 200 for pod in pods)

    wait_until(all_ready, 30, interval=0.2)
    # The probes' port answers on every pod (process i would serve on port + i otherwise).
    assert [(pod.get("/healthz"), pod.get("/readyz")) for pod in pods] == [(200, 200)] * replicas
    assert sink.wait_for(lambda s: len({m["source"] for m in s.messages}) == len(feed_names))

    # One Bytewax cluster: each process knows its id from its pod name; each feed is read by
    # exactly one process; the feeds are spread over the processes.
    for i, pod in enumerate(pods):
        starting = [e for e in pod.logs() if e["event"] == "starting"]
        assert starting and starting[0]["process_id"] == i, pod.logs()
        assert len(starting[0]["addresses"]) == replicas
    up = {pod.name: pod.feeds_up() for pod in pods}
    print("feeds per pod:", {name: sorted(feeds) for name, feeds in up.items()})
    assert sorted(feed for feeds in up.values() for feed in feeds) == sorted(feed_names)
    assert all(up.values()), f"a pod reads no feed: {up}"
    assert sink.connections == replicas

    # Kubernetes stops a pod with one SIGTERM, then waits terminationGracePeriodSeconds.
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    stopped_at = time.monotonic()
    for pod in pods:
        pod.process.send_signal(signal.SIGTERM)
    codes = []
    for pod in pods:
        left = max(0.1, grace - (time.monotonic() - stopped_at))
        codes.append(pod.process.wait(left))
    print(f"all pods exited {time.monotonic() - stopped_at:.2f}s after SIGTERM")
    assert codes == [0] * replicas, [pod.log.read_text()[-2000:] for pod in pods]
    assert sink.wait_for(lambda s: len(s.close_codes) == replicas, 5)
    assert sink.close_codes == [1000] * replicas
    for pod in pods:
        assert any(e["event"] == "stopped" for e in pod.logs()), pod.name
