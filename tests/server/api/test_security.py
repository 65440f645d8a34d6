"""TLS (with optional client certificates), bearer tokens, message size limits and raw
garbage requests, over real servers on loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distill_serve.client import Client, DistillError
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine
from distill_serve.v1 import distill_pb2 as pb
from tests.certs import make_pki
from tests.conftest import ServerThread

TOKEN = "s3cret-token"


def health(channel: grpc.Channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    )


@pytest.fixture(scope="module")
def token_server(engine: Engine):  # type: ignore[no-untyped-def]
    s = ServerThread(ServerConfig(port=0, auth_tokens=(TOKEN, "second-token")), engine)
    yield s
    s.stop()


def test_requests_without_valid_token_are_unauthenticated(token_server: ServerThread) -> None:
    for token in (None, "wrong", ""):
        with Client(token_server.target, token=token, timeout=10) as c:
            for call in (
                lambda: c.info(),
                lambda: c.generate("crossfade", 0.2),
                lambda: c.generate_streamed("crossfade", 0.2),
            ):
                with pytest.raises(DistillError) as info:
                    call()
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in info.value.details
    with grpc.insecure_channel(token_server.target) as ch:  # reflection is closed too
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as rinfo:
            list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            )
        assert rinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING  # health stays open


def test_valid_tokens_are_served(token_server: ServerThread) -> None:
    for token in (TOKEN, "second-token"):
        with Client(token_server.target, token=token, timeout=60) as c:
            assert c.generate("crossfade", 0.25, seed=1).audio.shape == (1, round(0.25 * 44100))
    with Client(token_server.target, metadata=[("authorization", f"bearer {TOKEN}")]) as c:
        assert c.info().latent_dim == 64  # the scheme is case-insensitive


def test_tls_and_client_certificates(engine: Engine, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ca = pki.ca.read_bytes()
    tls = ServerThread(
        ServerConfig(port=0, tls_cert=pki.server_cert, tls_key=pki.server_key), engine
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        with Client(f"localhost:{tls.port}", credentials=creds, timeout=60) as c:
            assert c.generate("crossfade", 0.25).audio.shape[1] == round(0.25 * 44100)
        with Client(tls.target, timeout=3) as plain, pytest.raises(DistillError) as info:
            plain.info()  # plaintext to a TLS port fails
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        tls.stop()
    mtls = ServerThread(
        ServerConfig(
            port=0, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
        ),
        engine,
    )
    try:
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
        with (
            Client(f"localhost:{mtls.port}", credentials=no_cert, timeout=3) as c,
            pytest.raises(DistillError),
        ):
            c.info()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        with Client(f"localhost:{mtls.port}", credentials=with_cert, timeout=10) as c:
            assert c.info().latent_dim == 64
    finally:
        mtls.stop()


def test_tls_config_needs_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ServerConfig(tls_cert=tmp_path / "a.pem")
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerConfig(tls_client_ca=tmp_path / "ca.pem")


def test_message_size_limit(server: ServerThread) -> None:
    huge = pb.GenerationSpec(
        mode=pb.CHUNK_MODE_SLIDER,
        duration_s=1,
        latent=pb.LatentVector(values=np.zeros(400_000).tolist()),
    )
    with grpc.insecure_channel(server.target) as ch:
        generate = ch.unary_unary(
            "/distill_serve.v1.DistillService/Generate",
            request_serializer=pb.GenerateRequest.SerializeToString,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            generate(pb.GenerateRequest(spec=huge), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_garbage_bytes_get_invalid_argument(server: ServerThread, method: str) -> None:
    with grpc.insecure_channel(server.target) as ch:
        path = f"/distill_serve.v1.DistillService/{method}"
        call = ch.unary_stream(path) if method == "GenerateStream" else ch.unary_unary(path)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05\x08", bytes(range(256))):
            with pytest.raises(grpc.RpcError) as info:
                result = call(garbage, timeout=10)
                if method == "GenerateStream":
                    list(result)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "not a valid protobuf message" in info.value.details()
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING


def test_two_authorization_headers_are_refused(token_server: ServerThread) -> None:
    both = [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")]
    for metadata in (both, both[::-1]):  # neither the first nor the last decides
        with (
            Client(token_server.target, metadata=metadata, timeout=10) as c,
            pytest.raises(DistillError) as info,
        ):
            c.info()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "one authorization header" in info.value.details


def test_token_file_comments_are_not_part_of_tokens(tmp_path: Path) -> None:
    from distill_serve.server.api.cli import tokens

    path = tmp_path / "tokens.txt"
    path.write_text("# the team's tokens\nalpha  # laptop\n\n  beta\n#gamma\n")
    assert tokens(path, env=None) == ("alpha", "beta")


def test_a_long_made_up_model_name_is_not_echoed_whole(server: ServerThread) -> None:
    with Client(server.target, timeout=10) as c, pytest.raises(DistillError) as info:
        c.generate("crossfade", 0.5, model="x" * 6000)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert len(info.value.details) < 400 and "xxx..." in info.value.details
