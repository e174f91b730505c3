"""Tests for livesnap.api.signature (ACS3-HMAC-SHA256 and RPC-HMAC-SHA1 verification)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import pytest
from alibabacloud_tea_openapi.utils import Utils  # type: ignore[import-untyped]
from aliyunsdkcore.auth.composer.rpc_signature_composer import (  # type: ignore[import-untyped]
    get_signed_url,
)
from darabonba.request import DaraRequest  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from livesnap.api.signature import (
    ACS3_REQUIRED_SIGNED_HEADERS,
    Authorization,
    Caller,
    NonceCache,
    SignatureError,
    SignedRequest,
    acs3_canonical_request,
    acs3_signature,
    acs3_string_to_sign,
    canonical_query_string,
    parse_authorization,
    parse_query,
    parse_timestamp,
    percent_encode,
    rpc_signature,
    rpc_string_to_sign,
    verify,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ice-wire" / "sample_capture.json"
CAPTURE: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
CAPTURED: list[tuple[str, dict[str, Any]]] = [
    (f"{call['label']}/{call['op']}", request)
    for call in CAPTURE["calls"]
    for request in call["requests"]
]

AK = "testid"
SECRET = "testsecret"
SECRETS = {AK: SECRET, "other": "othersecret"}
NOW = datetime(2026, 11, 28, 1, 8, 42, tzinfo=UTC)
MISMATCH_PREFIX = (
    "Specified signature is not matched with our calculation. server string to sign is:"
)
INCOMPLETE_PREFIX = "The request signature does not conform to Aliyun standards. "
RPC_COMMON = ("AccessKeyId", "Timestamp", "SignatureNonce", "SignatureMethod", "SignatureVersion")
RPC_RESERVED = {*RPC_COMMON, "Signature", "Action", "Version", "Format", "SignatureType"}

Value = str | bytes
Pairs = Sequence[tuple[str, Value]]


# --------------------------------------------------------------------------- helpers


def captured(op_label: str) -> SignedRequest:
    """The captured request whose label ends with ``op_label``."""
    matches = [r for label, r in CAPTURED if label.endswith(op_label)]
    assert len(matches) == 1, op_label
    return to_signed(matches[0])


def to_signed(raw: dict[str, Any]) -> SignedRequest:
    """Turn a captured request into a SignedRequest the way the HTTP layer will."""
    grouped: dict[str, list[str]] = {}
    for name, value in raw["headers"]:
        grouped.setdefault(name.lower(), []).append(value)
    headers = {name: ",".join(values) for name, values in grouped.items()}
    content_type = headers.get("content-type", "")
    return SignedRequest(
        method=raw["method"],
        path=raw["path"],
        raw_query=raw["raw_query"],
        headers=headers,
        body=raw["body"].encode("utf-8"),
        form=content_type.startswith("application/x-www-form-urlencoded"),
    )


def request_time(req: SignedRequest) -> datetime:
    """The time a request claims to have been signed at."""
    pairs = parse_query(req.raw_query) + parse_query(req.body.decode() if req.form else "")
    stamp = req.headers.get("x-acs-date") or dict(pairs)["Timestamp"]
    return datetime.fromisoformat(stamp)


def check(
    req: SignedRequest,
    *,
    secrets: dict[str, str] | None = None,
    now: datetime | None = None,
    nonces: NonceCache | None = None,
    window: timedelta = timedelta(minutes=15),
) -> Caller:
    table = SECRETS if secrets is None else secrets
    return verify(
        req,
        secret_for=table.get,
        now=request_time(req) if now is None else now,
        nonces=NonceCache() if nonces is None else nonces,
        window=window,
    )


def error_of(req: SignedRequest, **kwargs: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        check(req, **kwargs)
    return info.value


def with_headers(req: SignedRequest, **changes: str | None) -> SignedRequest:
    """Copy with headers changed (``x_acs_date`` means ``x-acs-date``; None removes)."""
    headers = dict(req.headers)
    for key, value in changes.items():
        name = key.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return replace(req, headers=headers)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# An independent client-side signer (written from spec §6, sharing no code with the module).


def enc(value: Value) -> str:
    return quote(value, safe="")


def wire(pairs: Pairs) -> str:
    """Encode pairs the way the SDKs put them on the wire (urlencode: space -> '+')."""
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)


def canonical(pairs: Pairs) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in pairs))


def sign_acs3(
    *,
    params: Pairs = (),
    body: bytes = b"",
    content_type: str | None = None,
    method: str = "GET",
    secret: str = SECRET,
    ak: str = AK,
    when: datetime = NOW,
    nonce: str | None = None,
    algorithm: str = "ACS3-HMAC-SHA256",
    drop: Sequence[str] = (),
    unsigned: Sequence[str] = (),
    override: dict[str, str] | None = None,
    tamper: Callable[[Pairs], Pairs] | None = None,
) -> SignedRequest:
    """Sign like a client. ``drop``: headers not sent; ``unsigned``: sent, not signed."""
    headers = {
        "host": "ice.example.com",
        "x-acs-action": "GetLiveSnapshotJob",
        "x-acs-version": "2020-11-09",
        "x-acs-date": stamp(when),
        "x-acs-signature-nonce": uuid.uuid4().hex if nonce is None else nonce,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        "accept": "application/json",
    }
    if content_type is not None:
        headers["content-type"] = content_type
    headers.update(override or {})
    for name in drop:
        del headers[name]
    signed = sorted(name for name in headers if name not in unsigned)
    canonical_request = "\n".join(
        [
            method,
            "/",
            canonical(params),
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    signature = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"{algorithm} Credential={ak},SignedHeaders={';'.join(signed)},Signature={signature}"
    )
    headers["user-agent"] = "test-client/1.0"
    headers["accept-encoding"] = "identity"
    return SignedRequest(
        method=method,
        path="/",
        raw_query=wire(tamper(params) if tamper else params),
        headers=headers,
        body=body,
        form=content_type == "application/x-www-form-urlencoded",
    )


def sign_rpc(
    *,
    params: Pairs = (),
    form: Pairs = (),
    method: str = "GET",
    secret: str = SECRET,
    ak: str = AK,
    when: datetime = NOW,
    nonce: str | None = None,
    override: dict[str, str | None] | None = None,
    tamper: Callable[[Pairs], Pairs] | None = None,
) -> SignedRequest:
    """Sign like a legacy RPC client; ``tamper`` rewrites query/form pairs after signing."""
    common: dict[str, str | None] = {
        "AccessKeyId": ak,
        "Action": "GetLiveSnapshotJob",
        "Format": "JSON",
        "Version": "2020-11-09",
        "Timestamp": stamp(when),
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex if nonce is None else nonce,
        "SignatureType": "",
    }
    common.update(override or {})
    query: list[tuple[str, Value]] = [(k, v) for k, v in common.items() if v is not None]
    query += params
    to_sign = f"{method}&%2F&{enc(canonical([*query, *form]))}"
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    signature = base64.b64encode(digest).decode()
    keep: Callable[[Pairs], Pairs] = tamper or (lambda pairs: pairs)
    headers = {"host": "ice.example.com", "x-acs-action": "GetLiveSnapshotJob"}
    if form:
        headers["content-type"] = "application/x-www-form-urlencoded"
    return SignedRequest(
        method=method,
        path="/",
        raw_query=wire([*keep(query), ("Signature", signature)]),
        headers=headers,
        body=wire(keep(form)).encode(),
        form=bool(form),
    )


# --------------------------------------------------------------------------- captured requests


@pytest.mark.parametrize(("label", "raw"), CAPTURED, ids=[label for label, _ in CAPTURED])
def test_captured_request_verifies(label: str, raw: dict[str, Any]) -> None:
    req = to_signed(raw)
    caller = check(req)
    assert caller.access_key_id == AK
    expected = "ACS3-HMAC-SHA256" if "authorization" in req.headers else "HMAC-SHA1"
    assert caller.scheme == expected


def test_capture_covers_both_schemes_and_methods() -> None:
    reqs = [to_signed(raw) for _, raw in CAPTURED]
    assert len(reqs) == 11
    assert {("authorization" in r.headers, r.method) for r in reqs} == {
        (True, "GET"),
        (True, "POST"),
        (False, "GET"),
        (False, "POST"),
    }


# HMAC zero-pads keys to the block size, so "testsecret\0" is the same ACS3 key as "testsecret".
other_secrets = st.text(max_size=40).filter(lambda s: s.rstrip("\x00") != SECRET)


@settings(max_examples=40, deadline=None)
@given(secret=other_secrets)
def test_captured_requests_fail_with_any_other_secret(secret: str) -> None:
    nonces = NonceCache()
    for _, raw in CAPTURED:
        req = to_signed(raw)
        err = error_of(req, secrets={AK: secret}, nonces=nonces)
        assert (err.code, err.status) == ("SignatureDoesNotMatch", 400)
        assert err.message.startswith(MISMATCH_PREFIX)
    assert len(nonces) == 0


def test_mismatch_message_carries_the_server_string_to_sign() -> None:
    acs3 = captured("v3/get_live_snapshot_job")
    auth = parse_authorization(acs3.headers["authorization"])
    server = acs3_string_to_sign(acs3_canonical_request(acs3, auth.signed_headers))
    assert error_of(acs3, secrets={AK: "x"}).message == MISMATCH_PREFIX + server

    rpc = captured("core-get/GetLiveSnapshotJob")
    params = [p for p in parse_query(rpc.raw_query) if p[0] != "Signature"]
    message = error_of(rpc, secrets={AK: "x"}).message
    # the legacy SDK compares the text after the first ':' with its own string to sign
    assert message.split(":", 1)[1] == rpc_string_to_sign("GET", params)


# --------------------------------------------------------------------------- spec vectors

SPEC_61_CANONICAL_REQUEST = (
    "GET\n"
    "/\n"
    "JobId=job-1\n"
    "accept:application/json\n"
    "host:127.0.0.1:18080\n"
    "user-agent:AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2\n"
    "x-acs-action:GetLiveSnapshotJob\n"
    "x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
    "x-acs-credentials-provider:static_ak\n"
    "x-acs-date:2026-11-28T01:08:41Z\n"
    "x-acs-signature-nonce:11e854cfcc7277e321d1dc095a9d18d7\n"
    "x-acs-version:2020-11-09\n"
    "\n"
    "accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;"
    "x-acs-date;x-acs-signature-nonce;x-acs-version\n"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)


def test_spec_6_1_acs3_vector() -> None:
    req = captured("v3/get_live_snapshot_job")
    auth = parse_authorization(req.headers["authorization"])
    assert auth.algorithm == "ACS3-HMAC-SHA256"
    assert auth.credential == AK
    canonical_request = acs3_canonical_request(req, auth.signed_headers)
    assert canonical_request == SPEC_61_CANONICAL_REQUEST
    to_sign = acs3_string_to_sign(canonical_request)
    assert to_sign == (
        "ACS3-HMAC-SHA256\n91dd4cc6da12c5aadee69dd614ce14ab7e2cb67ee427b41a550793b3237994df"
    )
    signature = acs3_signature(SECRET, to_sign)
    assert signature == "875400e9b84607b5dc24409edfded638de71e2d4abc2bab8a378872c0b74fd53"
    assert signature == auth.signature


def test_spec_6_2_rpc_vector() -> None:
    req = captured("v1/get_live_snapshot_job")
    params = parse_query(req.raw_query)
    signed = [p for p in params if p[0] != "Signature"]
    expected_canonical = (
        "AccessKeyId=testid&Action=GetLiveSnapshotJob&Format=json&JobId=job-1"
        "&SignatureMethod=HMAC-SHA1&SignatureNonce=9f5884b4c3e86828c1f292b4280a3f26"
        "&SignatureVersion=1.0&Timestamp=2026-11-28T01%3A08%3A42Z&Version=2020-11-09"
    )
    to_sign = rpc_string_to_sign("GET", signed)
    assert to_sign == "GET&%2F&" + percent_encode(expected_canonical)
    assert rpc_signature(SECRET, to_sign) == "fLgHRaJ+4mxubanliRxHt8Ugw9Y="
    assert dict(params)["Signature"] == "fLgHRaJ+4mxubanliRxHt8Ugw9Y="


def test_special_characters_capture_canonical_query() -> None:
    req = captured("v3-special/list_live_snapshot_jobs")
    assert canonical_query_string(req.raw_query) == (
        "SearchKeyWord=%E6%B5%8B%E8%AF%95%20%2A~%21%27%28%29%2B%26%3D%2F%25"
    )


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("", ""),
        ("AZaz09-_.~", "AZaz09-_.~"),
        ("a b", "a%20b"),
        ("*", "%2A"),
        ("+&=/%?#", "%2B%26%3D%2F%25%3F%23"),
        ("!'()", "%21%27%28%29"),
        ("测试", "%E6%B5%8B%E8%AF%95"),
        ("\x00\n", "%00%0A"),
        (b"\xff\x00", "%FF%00"),
        ("\udcff", "%FF"),  # surrogateescape'd byte goes back to the raw byte
    ],
)
def test_percent_encode(value: str | bytes, encoded: str) -> None:
    assert percent_encode(value) == encoded


def test_percent_encode_never_raises_on_lone_surrogates() -> None:
    assert percent_encode("\ud800") == "%ED%A0%80"


def test_parse_query_keeps_blanks_order_and_duplicates() -> None:
    assert parse_query("b=2&&a=&c&a=1+%2B%20x") == [
        ("b", "2"),
        ("a", ""),
        ("c", ""),
        ("a", "1 + x"),
    ]
    assert parse_query("") == []


def test_parse_query_is_byte_exact_for_invalid_utf8() -> None:
    pairs = parse_query("k=%FF%C3")
    assert canonical_query_string("k=%FF%C3") == "k=%FF%C3"
    assert percent_encode(pairs[0][1]) == "%FF%C3"


def test_canonical_query_sorts_by_encoded_name_then_value() -> None:
    raw = "b=2&a.b=1&a=z&a=y&TemplateIds.2=t2&TemplateIds.1=t1"
    assert canonical_query_string(raw) == ("TemplateIds.1=t1&TemplateIds.2=t2&a=y&a=z&a.b=1&b=2")


def test_parse_authorization_is_lenient_about_spacing_and_case() -> None:
    auth = parse_authorization(
        " ACS3-HMAC-SHA256  Credential=ak1 , SignedHeaders= Host ; X-Acs-Date ,Signature=AB12 "
    )
    assert auth == Authorization(
        algorithm="ACS3-HMAC-SHA256",
        credential="ak1",
        signed_headers=("host", "x-acs-date"),
        signature="AB12",
    )


@pytest.mark.parametrize(
    "value",
    [
        "ACS3-HMAC-SHA256",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host",
        "ACS3-HMAC-SHA256 Credential=ak,Signature=ab",
        "ACS3-HMAC-SHA256 SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=ab,Signature=cd",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host;;x-acs-date,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature",
    ],
)
def test_parse_authorization_rejects_malformed(value: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_authorization(value)
    assert info.value.code == "IncompleteSignature"
    assert info.value.message.startswith(INCOMPLETE_PREFIX)


def test_signature_error_carries_the_envelope_fields() -> None:
    err = SignatureError("SignatureNonceUsed", "Specified signature nonce was used already.")
    assert (err.code, err.status) == ("SignatureNonceUsed", 400)
    assert str(err) == "SignatureNonceUsed: Specified signature nonce was used already."
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.message, copy.status) == (err.code, err.message, err.status)


def test_parse_timestamp() -> None:
    assert parse_timestamp("2026-11-28T01:08:42Z") == NOW


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2026-11-28T01:08:42",
        "2026-11-28 01:08:42Z",
        "2026-11-28T01:08:42.000Z",
        "2026-11-28T01:08:42+00:00",
        "2026-11-28t01:08:42z",
        "2026-1-28T01:08:42Z",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-28T24:00:00Z",
        "٢٠٢٦-11-28T01:08:42Z",
        " 2026-11-28T01:08:42Z",
    ],
)
def test_parse_timestamp_rejects_other_formats(value: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_timestamp(value)
    assert (info.value.code, info.value.status) == ("InvalidTimeStamp.Format", 400)
    assert info.value.message == "Specified time stamp or date value is not well formatted."


# --------------------------------------------------------------------------- own signer


def test_own_signer_round_trips() -> None:
    assert check(sign_acs3(params=[("JobId", "j 1")])) == Caller(AK, "ACS3-HMAC-SHA256")
    form_body = b"Command=stop&JobId=job-1"
    acs3_post = sign_acs3(
        method="POST", body=form_body, content_type="application/x-www-form-urlencoded"
    )
    assert check(acs3_post).scheme == "ACS3-HMAC-SHA256"
    assert check(sign_rpc(params=[("JobId", "j 1")])) == Caller(AK, "HMAC-SHA1")
    rpc_post = sign_rpc(method="POST", form=[("Command", "stop"), ("JobId", "job-1")])
    assert check(rpc_post).scheme == "HMAC-SHA1"


names = st.text(min_size=1, max_size=12)
values = st.text(max_size=24)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    scheme=st.sampled_from(["acs3", "rpc-query", "rpc-form"]),
    others=st.lists(st.tuples(names, values), max_size=4),
    name=names,
    value=st.text(min_size=1, max_size=24),
)
def test_property_sign_verify_and_any_byte_flip_fails(
    data: st.DataObject,
    scheme: str,
    others: list[tuple[str, str]],
    name: str,
    value: str,
) -> None:
    if scheme != "acs3":
        others = [(k, v) for k, v in others if k not in RPC_RESERVED]
        name = "X" + name if name in RPC_RESERVED else name
    raw = value.encode("utf-8")
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    flipped = raw[:index] + bytes([raw[index] ^ mask]) + raw[index + 1 :]
    target: tuple[str, Value] = (name, value)

    def flip(pairs: Pairs) -> Pairs:
        return [(name, flipped) if pair == target else pair for pair in pairs]

    params: list[tuple[str, Value]] = [*others, target]
    if scheme == "acs3":
        good, bad = sign_acs3(params=params), sign_acs3(params=params, tamper=flip)
    elif scheme == "rpc-query":
        good, bad = sign_rpc(params=params), sign_rpc(params=params, tamper=flip)
    else:
        good = sign_rpc(method="POST", form=params)
        bad = sign_rpc(method="POST", form=params, tamper=flip)
    nonces = NonceCache()
    assert error_of(bad, nonces=nonces).code == "SignatureDoesNotMatch"
    assert check(good, nonces=nonces).access_key_id == AK


# --------------------------------------------------------------------------- tampering


def test_acs3_tampered_body_is_a_payload_mismatch() -> None:
    req = captured("v3/submit_live_snapshot_job")
    tampered = replace(req, body=req.body.replace(b"my+job", b"my+jab"))
    err = error_of(tampered)
    assert (err.code, err.status) == ("IncompleteSignature", 400)
    assert err.message.startswith(INCOMPLETE_PREFIX)
    assert "x-acs-content-sha256" in err.message


def test_acs3_tampered_body_with_matching_hash_header_is_a_mismatch() -> None:
    req = captured("v3/submit_live_snapshot_job")
    body = req.body.replace(b"my+job", b"my+jab")
    tampered = with_headers(
        replace(req, body=body), x_acs_content_sha256=hashlib.sha256(body).hexdigest()
    )
    assert error_of(tampered).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "op", ["v1/submit_live_snapshot_job", "core-post-body/SubmitLiveSnapshotJob"]
)
def test_rpc_tampered_form_body_is_a_mismatch(op: str) -> None:
    req = captured(op)
    assert req.form
    tampered = replace(req, body=req.body.replace(b"tpl-1", b"tpl-2"))
    assert tampered.body != req.body
    assert error_of(tampered).code == "SignatureDoesNotMatch"
    assert error_of(replace(req, body=req.body + b"&Extra=1")).code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    "op", ["v3/get_live_snapshot_job", "v1/get_live_snapshot_job", "core-get/GetLiveSnapshotJob"]
)
def test_tampered_query_is_a_mismatch(op: str) -> None:
    req = captured(op)
    changed = replace(req, raw_query=req.raw_query.replace("job-1", "job-2"))
    assert error_of(changed).code == "SignatureDoesNotMatch"
    added = replace(req, raw_query=req.raw_query + "&PageSize=100")
    assert error_of(added).code == "SignatureDoesNotMatch"


def test_acs3_equivalent_query_encodings_verify() -> None:
    req = captured("v3-special/list_live_snapshot_jobs")
    pairs = parse_query(req.raw_query)
    reencoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='~')}" for k, v in pairs)
    assert reencoded != req.raw_query
    assert check(replace(req, raw_query=reencoded)).access_key_id == AK
    req = captured("v3/list_live_snapshot_templates")
    reordered = "&".join(reversed(req.raw_query.split("&")))
    assert check(replace(req, raw_query=reordered)).access_key_id == AK


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("host", "evil.example.com"),
        ("user-agent", "other"),
        ("x-acs-action", "DeleteLiveSnapshotTemplate"),
        ("x-acs-version", "2017-09-06"),
        ("accept", "text/xml"),
        ("x-acs-signature-nonce", "0" * 32),
        ("x-acs-date", "2026-11-28T01:08:40Z"),
    ],
)
def test_acs3_tampered_signed_header_is_a_mismatch(header: str, value: str) -> None:
    req = with_headers(captured("v3/get_live_snapshot_job"), **{header.replace("-", "_"): value})
    assert error_of(req, now=NOW).code == "SignatureDoesNotMatch"


def test_signed_header_whitespace_is_trimmed() -> None:
    req = captured("v3/get_live_snapshot_job")
    padded = with_headers(req, user_agent=f"  {req.headers['user-agent']} \t")
    assert check(padded).access_key_id == AK


@pytest.mark.parametrize(
    "op",
    ["v3/submit_live_snapshot_job", "v1/submit_live_snapshot_job", "core-get/GetLiveSnapshotJob"],
)
def test_unsigned_header_changes_are_fine(op: str) -> None:
    req = captured(op)
    changed = with_headers(
        req,
        accept_encoding="gzip, br",
        content_length=None,
        x_forwarded_for="10.0.0.1",
        connection="close",
    )
    if "authorization" not in req.headers:  # RPC signs no headers at all
        changed = with_headers(changed, user_agent="x", x_acs_action="Other", host="other")
    assert check(changed).access_key_id == AK


def test_rpc_authorization_header_that_is_not_acs3_is_ignored() -> None:
    req = with_headers(captured("v1/get_live_snapshot_job"), authorization="Bearer abc")
    assert check(req).scheme == "HMAC-SHA1"


def test_acs3_takes_precedence_over_a_signature_query_param() -> None:
    req = sign_acs3(params=[("Signature", "x"), ("SignatureMethod", "HMAC-SHA1")])
    assert check(req).scheme == "ACS3-HMAC-SHA256"


def test_rpc_signature_with_unescaped_plus_still_verifies() -> None:
    for attempt in range(200):
        req = sign_rpc(nonce=f"nonce-{attempt}")
        sig = dict(parse_query(req.raw_query))["Signature"]
        if "+" in sig:
            break
    else:  # pragma: no cover - 200 signatures without a '+' is practically impossible
        pytest.fail("no signature with '+' found")
    raw_query = req.raw_query.replace(quote_plus(sig), sig)
    assert f"Signature={sig}" in raw_query
    assert check(replace(req, raw_query=raw_query)).scheme == "HMAC-SHA1"


# --------------------------------------------------------------------------- time window


@pytest.mark.parametrize("op", ["v3/get_live_snapshot_job", "v1/get_live_snapshot_job"])
def test_expired_timestamp_both_schemes(op: str) -> None:
    req = captured(op)
    signed_at = request_time(req)
    skew = timedelta(minutes=15)
    for now in (signed_at + skew + timedelta(seconds=1), signed_at - skew - timedelta(seconds=1)):
        err = error_of(req, now=now)
        assert (err.code, err.status) == ("InvalidTimeStamp.Expired", 400)
        assert err.message == "Specified time stamp or date value is expired."
    for now in (signed_at + skew, signed_at - skew):  # the bounds are inclusive
        assert check(req, now=now).access_key_id == AK


def test_custom_window() -> None:
    req = sign_rpc()
    assert error_of(req, now=NOW + timedelta(seconds=2), window=timedelta(seconds=1)).code == (
        "InvalidTimeStamp.Expired"
    )
    assert check(req, now=NOW + timedelta(seconds=1), window=timedelta(seconds=1))


@pytest.mark.parametrize("scheme", ["acs3", "rpc"])
def test_bad_timestamp_format_both_schemes(scheme: str) -> None:
    if scheme == "acs3":
        req = sign_acs3(override={"x-acs-date": "2026-11-28 01:08:42"})
    else:
        req = sign_rpc(override={"Timestamp": "1764292122"})
    err = error_of(req, now=NOW)
    assert (err.code, err.status) == ("InvalidTimeStamp.Format", 400)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        verify(
            sign_rpc(),
            secret_for=SECRETS.get,
            now=NOW.replace(tzinfo=None),
            nonces=NonceCache(),
        )


# --------------------------------------------------------------------------- nonces


@pytest.mark.parametrize("op", ["v3/get_live_snapshot_job", "v1/get_live_snapshot_job"])
def test_reused_nonce_is_rejected(op: str) -> None:
    req = captured(op)
    nonces = NonceCache()
    check(req, nonces=nonces)
    err = error_of(req, nonces=nonces)
    assert (err.code, err.status) == ("SignatureNonceUsed", 400)
    assert err.message == "Specified signature nonce was used already."


@pytest.mark.parametrize("op", ["v3/submit_live_snapshot_job", "v1/submit_live_snapshot_job"])
def test_failed_requests_do_not_burn_the_nonce(op: str) -> None:
    req = captured(op)
    nonces = NonceCache()
    assert error_of(req, secrets={AK: "wrong"}, nonces=nonces).code == "SignatureDoesNotMatch"
    tampered = replace(req, raw_query=req.raw_query + "&x=1")
    assert error_of(tampered, nonces=nonces).code == "SignatureDoesNotMatch"
    late = request_time(req) + timedelta(hours=1)
    assert error_of(req, now=late, nonces=nonces).code == "InvalidTimeStamp.Expired"
    assert error_of(req, secrets={}, nonces=nonces).code == "InvalidAccessKeyId.NotFound"
    assert len(nonces) == 0
    assert check(req, nonces=nonces).access_key_id == AK
    assert error_of(req, nonces=nonces).code == "SignatureNonceUsed"


def test_same_nonce_under_different_access_keys_is_fine() -> None:
    nonces = NonceCache()
    check(sign_rpc(nonce="n1"), nonces=nonces)
    check(sign_rpc(nonce="n1", ak="other", secret="othersecret"), nonces=nonces)
    check(sign_acs3(nonce="n2"), nonces=nonces)
    assert error_of(sign_acs3(nonce="n1"), nonces=nonces).code == "SignatureNonceUsed"


def test_nonce_is_remembered_while_the_timestamp_is_still_acceptable() -> None:
    # signed 14 min in the future (allowed), so it stays replayable until NOW + 29 min,
    # longer than the cache's own 15 min window after first sight
    req = sign_acs3(when=NOW + timedelta(minutes=14))
    nonces = NonceCache(window_s=900)
    check(req, now=NOW, nonces=nonces)
    assert error_of(req, now=NOW + timedelta(minutes=28), nonces=nonces).code == (
        "SignatureNonceUsed"
    )
    assert error_of(req, now=NOW + timedelta(minutes=30), nonces=nonces).code == (
        "InvalidTimeStamp.Expired"
    )


def test_nonce_cache_basics() -> None:
    cache = NonceCache(window_s=10)
    assert not cache.seen("ak", "n", 100.0)
    assert cache.check_and_add("ak", "n", 100.0)
    assert cache.seen("ak", "n", 100.0)
    assert not cache.check_and_add("ak", "n", 105.0)
    assert cache.check_and_add("ak2", "n", 105.0)
    assert not cache.check_and_add("ak", "n", 110.0)  # kept for the whole window
    assert cache.check_and_add("ak", "n", 110.5)  # forgotten afterwards
    assert cache.check_and_add("ak", "m", 200.0, expires_at=300.0)
    assert not cache.check_and_add("ak", "m", 290.0)
    assert not cache.seen("ak", "n", 290.0)
    assert len(cache) == 1


def test_nonce_cache_is_bounded_and_drops_the_soonest_to_expire() -> None:
    cache = NonceCache(window_s=100, max_entries=3)
    for i, nonce in enumerate("abcd"):
        assert cache.check_and_add("ak", nonce, float(i))
    assert len(cache) == 3
    assert not cache.seen("ak", "a", 4.0)
    assert all(cache.seen("ak", n, 4.0) for n in "bcd")


@pytest.mark.parametrize(("window_s", "max_entries"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_nonce_cache_rejects_bad_settings(window_s: float, max_entries: int) -> None:
    with pytest.raises(ValueError):
        NonceCache(window_s=window_s, max_entries=max_entries)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 50, allow_nan=False)), max_size=60
    )
)
def test_nonce_cache_property(ops: list[tuple[str, float]]) -> None:
    """Never above max_entries; a nonce is refused iff a remembered entry is still live."""
    cache = NonceCache(window_s=5, max_entries=4)
    now = 0.0
    model: dict[str, float] = {}
    for nonce, step in ops:
        now += step / 10
        model = {n: t for n, t in model.items() if t >= now}
        added = cache.check_and_add("ak", nonce, now)
        if nonce in model:
            assert not added
        elif added:
            while len(model) >= 4:
                del model[min(model, key=model.__getitem__)]
            model[nonce] = now + 5
        assert len(cache) <= 4
        assert set(model) == {n for n in "abcdefgh" if cache.seen("ak", n, now)}


# --------------------------------------------------------------------------- unknown key, STS


@pytest.mark.parametrize("op", ["v3/get_live_snapshot_job", "v1/get_live_snapshot_job"])
def test_unknown_access_key(op: str) -> None:
    err = error_of(captured(op), secrets={"someone-else": SECRET})
    assert (err.code, err.status) == ("InvalidAccessKeyId.NotFound", 404)
    assert err.message == "Specified access key is not found."


def test_sts_token_is_neither_required_nor_validated_but_is_signed() -> None:
    req = captured("v3-sts/get_live_snapshot_job")
    assert req.headers["x-acs-security-token"] == "teststs"
    assert check(req) == Caller(AK, "ACS3-HMAC-SHA256")
    forged = with_headers(req, x_acs_security_token="other")
    assert error_of(forged).code == "SignatureDoesNotMatch"
    assert check(sign_rpc(params=[("SecurityToken", "anything")])).access_key_id == AK


# --------------------------------------------------------------------------- missing pieces


def test_no_signature_at_all() -> None:
    for req in (
        SignedRequest(method="GET", path="/", raw_query="", headers={}, body=b"", form=False),
        SignedRequest(
            method="GET",
            path="/",
            raw_query="Action=GetLiveSnapshotJob",
            headers={"authorization": "Bearer abc"},
            body=b"",
            form=False,
        ),
        # a Signature in a body that is not a form is not a parameter
        SignedRequest(
            method="POST",
            path="/",
            raw_query="",
            headers={"content-type": "text/plain"},
            body=b"Signature=abc&AccessKeyId=testid",
            form=False,
        ),
    ):
        err = error_of(req, now=NOW)
        assert (err.code, err.status) == ("IncompleteSignature", 400)
        assert err.message == INCOMPLETE_PREFIX + "No signature was found in the request."


def _incomplete(req: SignedRequest) -> str:
    err = error_of(req, now=NOW)
    assert (err.code, err.status) == ("IncompleteSignature", 400)
    assert err.message.startswith(INCOMPLETE_PREFIX)
    return err.message


@pytest.mark.parametrize("header", ACS3_REQUIRED_SIGNED_HEADERS)
def test_acs3_required_header_not_signed(header: str) -> None:
    assert header in _incomplete(sign_acs3(unsigned=[header]))
    assert header in _incomplete(sign_acs3(drop=[header]))


def test_acs3_content_type_must_be_signed_when_present() -> None:
    req = sign_acs3(
        method="POST",
        body=b"a=1",
        content_type="application/x-www-form-urlencoded",
        unsigned=["content-type"],
    )
    assert "content-type" in _incomplete(req)


def test_acs3_unsigned_content_type_without_a_body_is_accepted() -> None:
    """The SDK's async client sends an unsigned Content-Type with its empty GETs."""
    req = sign_acs3(content_type="application/octet-stream", unsigned=["content-type"])
    assert check(req).access_key_id == AK
    form = sign_acs3(content_type="application/x-www-form-urlencoded", unsigned=["content-type"])
    assert check(form).access_key_id == AK  # no body: nothing for the type to describe


def test_acs3_signed_header_missing_from_request() -> None:
    req = with_headers(captured("v3/get_live_snapshot_job"), user_agent=None)
    assert "user-agent" in _incomplete(req)


def test_acs3_unsupported_algorithm() -> None:
    assert "ACS3-HMAC-SM3" in _incomplete(sign_acs3(algorithm="ACS3-HMAC-SM3"))
    assert "ACS3-RSA-SHA256" in _incomplete(sign_acs3(algorithm="ACS3-RSA-SHA256"))


def test_acs3_empty_nonce() -> None:
    assert "x-acs-signature-nonce" in _incomplete(sign_acs3(nonce=" "))


def test_acs3_malformed_authorization() -> None:
    req = captured("v3/get_live_snapshot_job")
    header = req.headers["authorization"]
    _incomplete(with_headers(req, authorization=header.split(",Signature=")[0]))
    _incomplete(with_headers(req, authorization="ACS3-HMAC-SHA256"))


@pytest.mark.parametrize("name", RPC_COMMON)
@pytest.mark.parametrize("blank", [False, True])
def test_rpc_missing_common_parameter(name: str, blank: bool) -> None:
    req = sign_rpc(override={name: "" if blank else None})
    err = error_of(req, now=NOW)
    assert (err.code, err.status) == ("MissingParameter", 400)
    assert err.message == (
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied."
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SignatureMethod", "HMAC-SHA256"),
        ("SignatureMethod", "hmac-sha1"),
        ("SignatureVersion", "2.0"),
        ("SignatureVersion", "1"),
    ],
)
def test_rpc_unsupported_method_or_version(name: str, value: str) -> None:
    err = error_of(sign_rpc(override={name: value}), now=NOW)
    assert (err.code, err.status) == ("InvalidParameter", 400)
    assert name in err.message


def test_rpc_common_parameters_may_come_from_the_form_body() -> None:
    req = sign_rpc(
        method="POST", form=[("SignatureNonce", "in-body")], override={"SignatureNonce": None}
    )
    nonces = NonceCache()
    check(req, nonces=nonces)
    assert nonces.seen(AK, "in-body", NOW.timestamp())


def placed(req: SignedRequest, placement: str) -> SignedRequest:
    """The signed GET ``req`` re-sent as a form POST with its pairs moved.

    ``body``: every pair, Signature included, in the body; ``split``: alternate pairs;
    ``both``: every pair in the query and the body (signed as sent, twice).
    """
    pairs = parse_query(req.raw_query)
    signature = next(v for k, v in pairs if k == "Signature")
    unsigned = [(k, v) for k, v in pairs if k != "Signature"]
    if placement == "both":
        unsigned = unsigned + unsigned
    query = {"body": [], "split": unsigned[::2], "both": unsigned[: len(unsigned) // 2]}[placement]
    form = [p for p in unsigned if p not in query] if placement != "both" else unsigned[len(query):]
    to_sign = f"POST&%2F&{enc(canonical(unsigned))}"
    digest = hmac.new((SECRET + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    signature = base64.b64encode(digest).decode()
    in_query = placement == "split"
    return SignedRequest(
        method="POST", path="/",
        raw_query=wire([*query, *([("Signature", signature)] if in_query else [])]),
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=wire([*form, *([] if in_query else [("Signature", signature)])]).encode(),
        form=True,
    )


@pytest.mark.parametrize("placement", ["body", "split", "both"])
def test_rpc_parameters_in_any_placement(placement: str) -> None:
    """Older clients send every parameter, Signature included, in the form body."""
    req = placed(sign_rpc(nonce="placed"), placement)
    nonces = NonceCache()
    assert check(req, nonces=nonces) == Caller(AK, "HMAC-SHA1")
    assert nonces.seen(AK, "placed", NOW.timestamp())
    if placement == "body":
        assert req.raw_query == ""


def test_rpc_all_in_body_is_signed_over_the_body() -> None:
    req = placed(sign_rpc(), "body")
    tampered = replace(req, body=req.body.replace(b"GetLiveSnapshotJob", b"GetLiveSnapshotJob2"))
    assert error_of(tampered, now=NOW).code == "SignatureDoesNotMatch"
    assert error_of(replace(req, form=False), now=NOW).code == "IncompleteSignature"


def test_rpc_legacy_core_sdk_post_with_every_parameter_in_the_body() -> None:
    """The legacy SDK's own signer, its pairs put in the body as other-language clients do."""
    params = {"Action": "GetLiveSnapshotJob", "Version": "2020-11-09", "Format": "JSON",
              "JobId": "j-1"}
    url, _ = get_signed_url(params, AK, SECRET, "JSON", "POST", {})
    raw_query = url.split("?", 1)[1]
    req = SignedRequest(method="POST", path="/", raw_query="",
                        headers={"content-type": "application/x-www-form-urlencoded"},
                        body=raw_query.encode(), form=True)
    assert check(req, now=datetime.now(UTC)).access_key_id == AK


# --------------------------------------------------------------------------- check order


def test_order_parse_before_access_key_lookup() -> None:
    req = sign_rpc(ak="nobody", override={"SignatureNonce": None})
    assert error_of(req, now=NOW).code == "MissingParameter"
    assert error_of(sign_acs3(ak="nobody", unsigned=["host"]), now=NOW).code == (
        "IncompleteSignature"
    )


def test_order_access_key_before_timestamp_format() -> None:
    req = sign_rpc(ak="nobody", override={"Timestamp": "yesterday"})
    assert error_of(req, now=NOW).code == "InvalidAccessKeyId.NotFound"


def test_order_timestamp_format_before_signature() -> None:
    req = sign_acs3(override={"x-acs-date": "yesterday"}, secret="wrong")
    assert error_of(req, now=NOW).code == "InvalidTimeStamp.Format"


def test_order_signature_before_window_before_nonce() -> None:
    late = NOW + timedelta(hours=1)
    assert error_of(sign_rpc(secret="wrong"), now=late).code == "SignatureDoesNotMatch"
    payload = replace(sign_acs3(body=b"x", method="POST"), body=b"y")
    assert error_of(payload, now=late).code == "IncompleteSignature"
    req = sign_acs3()
    nonces = NonceCache()
    check(req, now=NOW, nonces=nonces)
    assert error_of(req, now=late, nonces=nonces).code == "InvalidTimeStamp.Expired"
    assert error_of(req, now=NOW, nonces=nonces).code == "SignatureNonceUsed"


# --------------------------------------------------------------------------- real SDK signers


sdk_keys = st.from_regex(r"[A-Z][A-Za-z0-9]{0,10}(\.[1-9])?", fullmatch=True).filter(
    lambda k: k not in RPC_RESERVED
)
sdk_params = st.dictionaries(sdk_keys, st.text(max_size=30), max_size=5)


@settings(max_examples=60, deadline=None)
@given(params=sdk_params, as_form=st.booleans())
def test_tea_openapi_acs3_signer_round_trip(params: dict[str, str], as_form: bool) -> None:
    request = DaraRequest()
    request.method = "POST" if as_form else "GET"
    request.pathname = "/"
    request.query = {} if as_form else dict(params)
    body = Utils.to_form(params) if as_form else ""
    headers = {
        "host": "127.0.0.1:18080",
        "x-acs-version": "2020-11-09",
        "x-acs-action": "SubmitLiveSnapshotJob",
        "user-agent": "AlibabaCloud (Linux; x86_64) Python/3.11 TeaDSL/2",
        "x-acs-date": stamp(NOW),
        "x-acs-signature-nonce": Utils.get_nonce(),
        "accept": "application/json",
    }
    if as_form:
        headers["content-type"] = "application/x-www-form-urlencoded"
    payload = Utils.hash(body.encode("utf-8"), "ACS3-HMAC-SHA256").hex()
    headers["x-acs-content-sha256"] = payload
    request.headers = dict(headers)
    authorization = Utils.get_authorization(request, "ACS3-HMAC-SHA256", payload, AK, SECRET)
    req = SignedRequest(
        method=request.method,
        path="/",
        raw_query=urlencode(request.query),
        headers={**headers, "authorization": authorization, "accept-encoding": "identity"},
        body=body.encode("utf-8"),
        form=as_form,
    )
    assert check(req, now=NOW) == Caller(AK, "ACS3-HMAC-SHA256")


@settings(max_examples=60, deadline=None)
@given(params=sdk_params, body_params=sdk_params, method=st.sampled_from(["GET", "POST"]))
def test_tea_openapi_rpc_signer_round_trip(
    params: dict[str, str], body_params: dict[str, str], method: str
) -> None:
    query = {
        "Action": "SubmitLiveSnapshotJob",
        "Format": "json",
        "Version": "2020-11-09",
        "Timestamp": stamp(NOW),
        "SignatureNonce": Utils.get_nonce(),
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "AccessKeyId": AK,
        **params,
    }
    body = {k: v for k, v in body_params.items() if k not in query} if method == "POST" else {}
    query["Signature"] = Utils.get_rpcsignature({**query, **body}, method, SECRET)
    req = SignedRequest(
        method=method,
        path="/",
        raw_query=urlencode(query),
        headers={"host": "127.0.0.1:18080"},
        body=Utils.to_form(body).encode("utf-8"),
        form=bool(body),
    )
    assert check(req, now=NOW) == Caller(AK, "HMAC-SHA1")


@settings(max_examples=60, deadline=None)
@given(params=sdk_params, body_params=sdk_params, method=st.sampled_from(["GET", "POST"]))
def test_legacy_core_sdk_signer_round_trip(
    params: dict[str, str], body_params: dict[str, str], method: str
) -> None:
    body = {k: v for k, v in body_params.items() if k not in params} if method == "POST" else {}
    url, client_string_to_sign = get_signed_url(
        {"Action": "SubmitLiveSnapshotJob", "Version": "2020-11-09", **params},
        AK,
        SECRET,
        "JSON",
        method,
        dict(body),
    )
    assert url.startswith("/?")
    req = SignedRequest(
        method=method,
        path="/",
        raw_query=url[2:],
        headers={"host": "127.0.0.1:18081"},
        body=urlencode(body).encode("utf-8"),
        form=bool(body),
    )
    assert check(req).scheme == "HMAC-SHA1"
    err = error_of(req, secrets={AK: "not-the-secret"})
    assert err.code == "SignatureDoesNotMatch"
    # what aliyun-python-sdk-core compares to turn the error into InvalidAccessKeySecret
    assert err.message.split(":", 1)[1] == client_string_to_sign
