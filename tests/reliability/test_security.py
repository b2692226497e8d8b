"""Security on real routers (tiny shard): the API key on HTTP and gRPC (401 / UNAUTHENTICATED, open
health and metrics), TLS and mutual TLS on the gRPC port with certificates made here, adapter ids that
are paths refused, adapters only from the configured folder and only from safetensors, and no key in
the logs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.procs import RouterProc
from tests.reliability.certs import Pem, make_ca, make_leaf
from tests.reliability.system import GOLDEN_NEW, GOLDEN_TEXT, Shard, golden_grpc_text, golden_ids, router_on

pytestmark = pytest.mark.slow

KEY = "k3y-Th4t-must-NEVER-be-logged"
WRONG = "wr0ng-key-also-not-logged"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    out = tmp_path_factory.mktemp("pki")
    ca, rogue = make_ca(out, "ca"), make_ca(out, "rogue")
    return {"ca": ca[0], "server": make_leaf(out, "server", ca, server=True),
            "client": make_leaf(out, "client", ca, server=False),
            "rogue_client": make_leaf(out, "rogue-client", rogue, server=False)}


@pytest.fixture(scope="module")
def keyed(shard: Shard, pki: dict[str, Pem]) -> Iterator[RouterProc]:
    """API key (from the environment) + TLS on gRPC."""
    tls = ("--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key))
    with router_on(shard, "keyed", *tls, "--log-level", "DEBUG", env={"API_KEY": KEY}) as router:
        yield router


def tls_channel(router: RouterProc, pki: dict[str, Pem], client: str | None = None) -> grpc.Channel:
    pair = pki[client].pair() if client else (None, None)
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert.read_bytes(),
                                         private_key=pair[0], certificate_chain=pair[1])
    return grpc.secure_channel(router.grpc, creds)


@pytest.mark.parametrize(("headers", "ok"), [
    ({}, False), ({"Authorization": f"Bearer {WRONG}"}, False), ({"Authorization": KEY}, False),
    ({"Authorization": f"Bearer {KEY}x"}, False), (AUTH, True), ({"X-Api-Key": KEY}, True),
])
def test_http_needs_the_key(keyed: RouterProc, headers: dict[str, str], ok: bool):
    body = {"inputs": GOLDEN_TEXT, "parameters": {"max_new_tokens": GOLDEN_NEW}}
    resp = requests.post(keyed.http + "/generate", json=body, headers=headers, timeout=60)
    if ok:
        assert resp.status_code == 200, resp.text
    else:
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert resp.json()["error_type"] == "unauthorized" and "API key" in resp.json()["error"]


def test_http_open_routes_and_refusal_before_reading(keyed: RouterProc):
    assert requests.get(keyed.http + "/health", timeout=30).status_code == 200
    assert "tgi_request_count" in requests.get(keyed.http + "/metrics", timeout=30).text
    for path in ("/info", "/v1/models"):
        assert requests.get(keyed.http + path, timeout=30).status_code == 401
        assert requests.get(keyed.http + path, headers=AUTH, timeout=30).status_code == 200
    big = b"x" * (3 << 20)  # over --max-request-bytes, but refused for the key before it is read
    assert requests.post(keyed.http + "/generate", data=big, timeout=60).status_code == 401
    assert golden_ids(keyed, AUTH)


def test_grpc_over_tls_needs_the_key(keyed: RouterProc, pki: dict[str, Pem]):
    with tls_channel(keyed, pki) as channel:
        text = golden_grpc_text(channel, (("authorization", f"Bearer {KEY}"),))
        assert text and golden_grpc_text(channel, (("x-api-key", KEY),)) == text
        for metadata in ((), (("authorization", f"Bearer {WRONG}"),), (("x-api-key", WRONG),)):
            with pytest.raises(grpc.RpcError) as info:
                golden_grpc_text(channel, metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = pb_grpc.GenerationServiceStub(channel).GenerateStream(pb.SingleGenerationRequest(
            request=pb.GenerationRequest(text="hi")), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no key
    with grpc.insecure_channel(keyed.grpc) as plain, pytest.raises(grpc.RpcError) as info:
        golden_grpc_text(plain, (("x-api-key", KEY),))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port


def test_mutual_tls_requires_a_client_certificate_from_the_ca(shard: Shard, pki: dict[str, Pem]):
    tls = ("--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
           "--tls-client-ca", str(pki["ca"].cert))
    with router_on(shard, "mtls", *tls) as router:
        with tls_channel(router, pki, "client") as channel:
            assert golden_grpc_text(channel) == golden_grpc_text(channel)
        for client in (None, "rogue_client"):
            with tls_channel(router, pki, client) as channel, pytest.raises(grpc.RpcError) as info:
                golden_grpc_text(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("adapter", ["../c0", "/etc", "c0/../a01", "..", "a01/", "%2e%2e%2fc0", "~root"])
def test_adapter_ids_are_names_not_paths(keyed: RouterProc, pki: dict[str, Pem], adapter: str):
    body = {"inputs": "x", "parameters": {"max_new_tokens": 2, "adapter_id": adapter}}
    resp = requests.post(keyed.http + "/generate", json=body, headers=AUTH, timeout=30)
    assert resp.status_code == 422 and resp.json()["error_type"] == "validation", resp.text
    with tls_channel(keyed, pki) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GenerationServiceStub(channel).Generate(pb.BatchedGenerationRequest(
            adapter_id=adapter, requests=[pb.GenerationRequest(text="x")]), timeout=30,
            metadata=(("x-api-key", KEY),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_adapters_only_from_the_adapter_dir_and_only_safetensors(keyed: RouterProc, shard: Shard,
                                                                 tmp_path: Path):
    outside = tmp_path / "outside"
    shutil.copytree(shard.source, outside)
    load = {"lora_name": "c2", "lora_path": str(outside)}
    resp = requests.post(keyed.http + "/v1/load_lora_adapter", json=load, headers=AUTH, timeout=30)
    assert resp.status_code == 422 and "--adapter-dir" in resp.json()["error"], resp.text
    pickled = shard.adapters / "p0"
    pickled.mkdir()
    shutil.copy(shard.source / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    try:
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2, "adapter_id": "p0"}}
        resp = requests.post(keyed.http + "/generate", json=body, headers=AUTH, timeout=30)
        assert resp.status_code == 422, resp.text
        assert "pickle" in resp.json()["error"] or "safetensors" in resp.json()["error"]
    finally:
        shutil.rmtree(pickled)


def test_no_key_in_any_log(keyed: RouterProc, shard: Shard):
    """Last in the module: everything above ran with DEBUG logging; neither key shows up anywhere."""
    golden_ids(keyed, AUTH)
    logs = [keyed.log, shard.proc.log]
    for log in logs:
        text = log.read_text(errors="replace")
        assert KEY not in text and WRONG not in text, log
    assert "request refused: no valid API key" in keyed.log.read_text()
