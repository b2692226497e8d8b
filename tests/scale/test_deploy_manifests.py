"""deploy/kubernetes/*.yaml (examples): they parse, every environment variable is a real flag of the
command it configures, and ports, sockets, probes and selectors agree with our CLI and with each other."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chameleon.tools.launch.args import build_parser as launch_parser
from router.cli import build_parser as router_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def load(name: str) -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return {d["kind"]: d for d in docs}


def containers() -> dict[str, dict[str, Any]]:
    pod = load("chameleon.yaml")["Deployment"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def parsed(parser: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    text = " ".join(parser.format_help().split())  # each flag's help ends with "[env: NAME]"
    known = {n.strip() for names in re.findall(r"\[env: ([A-Z0-9_, ]+)\]", text) for n in names.split(",")}
    unknown = set(env) - known
    assert not unknown, f"not flags of {parser.prog}: {sorted(unknown)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return parser.parse_args([])


def test_shard_and_router_environment_are_real_flags(monkeypatch: pytest.MonkeyPatch):
    c = containers()
    shards = parsed(launch_parser({}), env_of(c["shards"]), monkeypatch)
    router = parsed(router_parser(), env_of(c["router"]), monkeypatch)
    assert router.master_shard_uds_path == f"{shards.shard_uds_path}-0"
    assert shards.num_shard == c["shards"]["resources"]["limits"]["nvidia.com/gpu"]
    assert str(shards.model_id) == str(router.tokenizer) and shards.adapter_dir == router.adapter_dir
    ports = {p["name"]: p["containerPort"] for p in c["router"]["ports"]}
    assert ports == {"http": router.port, "grpc": router.grpc_port}
    sockets = {m["name"]: m["mountPath"] for name in ("shards", "router") for m in c[name]["volumeMounts"]}
    assert shards.shard_uds_path.startswith(sockets["sockets"] + "/")


def test_probes_use_our_health_route_and_probe_module():
    c = containers()
    port = next(p["containerPort"] for p in c["router"]["ports"] if p["name"] == "http")
    for probe in ("readinessProbe", "startupProbe"):
        assert c["router"][probe]["httpGet"] == {"path": "/health", "port": port}
    for probe in ("startupProbe", "livenessProbe"):
        command = c["shards"][probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "chameleon.tools.launch.probe"] and command[3] == "shards"
        assert importlib.util.find_spec(command[2]) is not None


def test_service_and_inference_pool_select_the_router_pods():
    app = load("chameleon.yaml")
    pool_docs = load("inferencepool.yaml")
    labels = app["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert app["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    router_ports = {p["name"]: p["containerPort"] for p in containers()["router"]["ports"]}
    service = app["Service"]["spec"]
    assert service["selector"] == labels
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == router_ports
    pool = pool_docs["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"] == labels
    # the EPP scrapes /metrics and sends OpenAI requests on the router's HTTP port
    assert pool["spec"]["targetPorts"] == [{"number": router_ports["http"]}]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] > 0
    (backend,) = pool_docs["HTTPRoute"]["spec"]["rules"][0]["backendRefs"]
    assert (backend["kind"], backend["name"]) == ("InferencePool", pool["metadata"]["name"])
