"""The CLI's signing client against the server's verifier (``livesnap.api.signature``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from livesnap.api.signature import NonceCache, SignatureError, SignedRequest, verify
from livesnap.client import (
    ApiError,
    Credentials,
    IceClient,
    PreparedRequest,
    TransportError,
    normalize_endpoint,
    sign_acs3,
    sign_rpc,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CREDS = Credentials(access_key_id="ak-1", access_key_secret="s3cr3t/+=")
SECRETS = {"ak-1": "s3cr3t/+="}
# Everything that canonicalisation can get wrong: spaces, +, &, =, ~, unicode, JSON, lists.
PARAMS = [
    ("JobName", "cam 1 + ü & = ~*'()"),
    ("StreamInput", json.dumps({"Type": "rtmp", "Url": "rtmp://origin/live/a b?t=1&x=2"})),
    ("TemplateIds.1", "system"),
    ("TemplateIds.2", "id-2"),
    ("Empty", ""),
]


def as_received(req: PreparedRequest) -> SignedRequest:
    return SignedRequest(method=req.method, path=req.path, raw_query=req.query,
                         headers=req.headers, body=req.body, form=True)


def check(req: PreparedRequest, *, secrets=SECRETS, now=NOW, nonces=None):
    return verify(as_received(req), secret_for=secrets.get, now=now,
                  nonces=nonces or NonceCache())


def rpc(params=PARAMS, creds=CREDS, nonce="n-1"):
    return sign_rpc("SubmitLiveSnapshotJob", params, creds, now=NOW, nonce=nonce)


def acs3(params=PARAMS, creds=CREDS, nonce="n-1"):
    return sign_acs3("SubmitLiveSnapshotJob", params, creds, host="127.0.0.1:8080", now=NOW,
                     nonce=nonce)


@pytest.mark.parametrize(("sign", "scheme"), [(rpc, "HMAC-SHA1"), (acs3, "ACS3-HMAC-SHA256")])
def test_round_trip_verifies(sign, scheme):
    caller = check(sign())
    assert (caller.access_key_id, caller.scheme) == ("ak-1", scheme)


@pytest.mark.parametrize("sign", [rpc, acs3])
def test_no_parameters_verify_too(sign):
    assert check(sign(params=[])).access_key_id == "ak-1"


@pytest.mark.parametrize("sign", [rpc, acs3])
def test_wrong_secret_is_signature_does_not_match(sign):
    with pytest.raises(SignatureError) as info:
        check(sign(creds=Credentials(access_key_id="ak-1", access_key_secret="wrong")))
    assert info.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("sign", [rpc, acs3])
def test_a_changed_body_fails(sign):
    req = sign()
    tampered = PreparedRequest(method=req.method, path=req.path, query=req.query,
                               headers=req.headers, body=req.body.replace(b"cam", b"cap"))
    with pytest.raises(SignatureError) as info:
        check(tampered)
    assert info.value.code in ("SignatureDoesNotMatch", "IncompleteSignature")


@pytest.mark.parametrize("sign", [rpc, acs3])
def test_clock_skew_is_reported_as_expired(sign):
    with pytest.raises(SignatureError) as info:
        check(sign(), now=NOW + timedelta(minutes=16))
    assert info.value.code == "InvalidTimeStamp.Expired"


def test_unknown_key_is_not_found():
    with pytest.raises(SignatureError) as info:
        check(acs3(), secrets={})
    assert info.value.code == "InvalidAccessKeyId.NotFound"


def test_rpc_keeps_action_parameters_out_of_the_query():
    req = rpc()
    assert "JobName" not in req.query and b"JobName=" in req.body
    assert "Signature=" in req.query and "SignatureNonce=n-1" in req.query


def test_acs3_signs_every_required_header():
    auth = acs3().headers["authorization"]
    assert auth.startswith("ACS3-HMAC-SHA256 Credential=ak-1,SignedHeaders=content-type;host;")
    for name in ("x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce",
                 "x-acs-content-sha256"):
        assert name in auth


# --------------------------------------------------------------------------- over httpx


def verifying_transport(nonces: NonceCache, seen: list[str]) -> httpx.MockTransport:
    """A fake server: verifies what httpx really sends (Host header included) and answers."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        received = SignedRequest(method=request.method, path=request.url.path,
                                 raw_query=request.url.query.decode(), headers=headers,
                                 body=request.content, form=True)
        try:
            caller = verify(received, secret_for=SECRETS.get, now=datetime.now(tz=UTC),
                            nonces=nonces)
        except SignatureError as exc:
            return httpx.Response(exc.status, json={"RequestId": "R", "Code": exc.code,
                                                    "Message": exc.message})
        seen.append(caller.scheme)
        return httpx.Response(200, json={"RequestId": "R", "JobId": "j-1"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("scheme", ["acs3", "rpc"])
def test_client_requests_verify_as_sent(scheme):
    seen: list[str] = []
    nonces = NonceCache()
    with IceClient(endpoint="127.0.0.1:8080", credentials=CREDS, scheme=scheme,
                   transport=verifying_transport(nonces, seen)) as client:
        for _ in range(3):  # a fresh nonce each time
            assert client.call("SubmitLiveSnapshotJob", PARAMS)["JobId"] == "j-1"
    assert len(seen) == 3


def test_client_raises_api_error_with_code_and_status():
    bad = Credentials(access_key_id="ak-1", access_key_secret="nope")
    with IceClient(endpoint="http://127.0.0.1:8080", credentials=bad,
                   transport=verifying_transport(NonceCache(), [])) as client:
        with pytest.raises(ApiError) as info:
            client.call("GetLiveSnapshotJob", {"JobId": "x"})
    assert (info.value.code, info.value.status, info.value.server_side) == (
        "SignatureDoesNotMatch", 400, False)


def fixed(status: int, content: bytes) -> httpx.MockTransport:
    return httpx.MockTransport(lambda _: httpx.Response(status, content=content))


def test_server_errors_are_server_side():
    body = json.dumps({"RequestId": "R", "Code": "ServiceUnavailable", "Message": "db"}).encode()
    with IceClient(endpoint="127.0.0.1:1", credentials=CREDS, transport=fixed(503, body)) as c:
        with pytest.raises(ApiError) as info:
            c.call("ListLiveSnapshotJobs")
    assert info.value.server_side and str(info.value) == "ServiceUnavailable: db"


def test_an_answer_that_is_not_ice_is_a_transport_error():
    with IceClient(endpoint="127.0.0.1:1", credentials=CREDS,
                   transport=fixed(502, b"<html>bad gateway</html>")) as c:
        with pytest.raises(TransportError, match="HTTP 502 without an ICE response"):
            c.call("ListLiveSnapshotJobs")


def test_connection_refused_is_a_transport_error_naming_the_endpoint():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with IceClient(endpoint="127.0.0.1:9", credentials=CREDS,
                   transport=httpx.MockTransport(refuse)) as c:
        with pytest.raises(TransportError, match=r"cannot reach http://127.0.0.1:9: .*refused"):
            c.call("ListLiveSnapshotJobs")


@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://snap.example.com", "https://snap.example.com"),
])
def test_endpoints_are_normalised(given, expected):
    assert str(normalize_endpoint(given)).rstrip("/") == expected


@pytest.mark.parametrize("bad", ["ftp://x", "http://", ""])
def test_bad_endpoints_are_refused(bad):
    with pytest.raises(ValueError, match="invalid endpoint"):
        normalize_endpoint(bad)


def test_credentials_hide_the_secret():
    assert "s3cr3t" not in repr(CREDS)
