"""``tls_cert``/``tls_key``: both or neither, a one-line reason for files that do not load,
and uvicorn given both."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from starlette.applications import Starlette
from tests.support.tls import make_certificates

from livesnap.config import Settings
from livesnap.node.httpserver import tls_problem
from livesnap.node.service import uvicorn_config


@pytest.fixture
def files(tmp_path):
    _, cert, key = make_certificates(["localhost", "127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    other_key = make_certificates(["localhost"])[2]
    (tmp_path / "other-key.pem").write_bytes(other_key)
    encrypted = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "encrypted-key.pem").write_bytes(encrypted)
    return tmp_path


def settings(folder, cert: str, key: str) -> Settings:
    return Settings(data_dir=folder, tls_cert=folder / cert, tls_key=folder / key)


def test_tls_is_off_by_default_and_an_empty_value_is_unset(tmp_path, monkeypatch):
    assert Settings(data_dir=tmp_path).server.scheme == "http"
    monkeypatch.setenv("LIVESNAP_TLS_CERT", "")
    monkeypatch.setenv("LIVESNAP_TLS_KEY", "")
    plain = Settings(data_dir=tmp_path).server
    assert (plain.tls_cert, plain.tls_key, plain.scheme) == (None, None, "http")
    assert tls_problem(plain.tls_cert, plain.tls_key) is None


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
def test_a_certificate_without_its_key_or_the_reverse_is_refused(tmp_path, given):
    with pytest.raises(ValidationError, match="HTTPS needs a certificate and its key"):
        Settings(data_dir=tmp_path, **{given: tmp_path / "x.pem"})


@pytest.mark.parametrize(("cert", "key", "reason"), [
    ("cert.pem", "key.pem", None),
    ("cert.pem", "missing.pem", "cannot read the TLS key {dir}/missing.pem: No such file"),
    ("missing.pem", "key.pem", "cannot read the TLS certificate {dir}/missing.pem: No such file"),
    ("key.pem", "key.pem", "the TLS certificate {dir}/key.pem holds no PEM certificate"),
    ("cert.pem", "cert.pem", "the TLS key {dir}/cert.pem is not a PEM private key"),
    ("cert.pem", "other-key.pem",
     "the TLS key {dir}/other-key.pem is not the key of the certificate {dir}/cert.pem"),
    ("cert.pem", "encrypted-key.pem", "the TLS key {dir}/encrypted-key.pem is encrypted"),
])
def test_files_that_do_not_load_are_named_in_one_line(files, cert, key, reason):
    chosen = settings(files, cert, key).server
    problem = tls_problem(chosen.tls_cert, chosen.tls_key)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None and "\n" not in problem
        assert problem.startswith(reason.format(dir=files)), problem


def test_uvicorn_gets_the_certificate_and_key(files):
    config = uvicorn_config(Starlette(), settings(files, "cert.pem", "key.pem"))
    assert (config.ssl_certfile, config.ssl_keyfile) == (files / "cert.pem", files / "key.pem")
    config.load()
    assert config.is_ssl and config.ssl is not None
    assert uvicorn_config(Starlette(), Settings(data_dir=files)).is_ssl is False
