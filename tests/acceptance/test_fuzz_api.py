"""Fuzzing the API through real signed HTTP against ``livesnap serve`` (capture off).

Each example is one HTTP request: a random or nearly-valid action and parameter set, put in
the query, the form body or both (sometimes chunked, sometimes with a content type the server
does not parse), signed with ACS3-HMAC-SHA256 or RPC HMAC-SHA1, and sometimes tampered with
after signing. Checked for every response:

* no 5xx; every answer is a JSON object with ``RequestId``; every error is ICE-shaped
  (``RequestId``, ``Code``, ``Message``, ``HostId``) with a 4xx status;
* a properly signed request is never refused for its signature, a tampered one always is;
* a refused request changes no stored data: the server's SQLite file is compared before and
  after (templates, jobs and files; a job's ``last_error``/``modified_ms`` record the last
  failed start and are left out).

The quick variant runs ``LIVESNAP_FUZZ_EXAMPLES`` (default 1000) seeded examples; the same
test runs the extended variant with e.g. ``LIVESNAP_FUZZ_EXAMPLES=100000``.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl, urlencode

import pytest
from alibabacloud_ice20201109 import models as m
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from Tea.exceptions import TeaException

from tests.support.service import LivesnapServer, ice_client
from tests.support.signing import acs3_headers, rpc_query

pytestmark = pytest.mark.acceptance

EXAMPLES = int(os.environ.get("LIVESNAP_FUZZ_EXAMPLES", "1000"))
SEED = int(os.environ.get("LIVESNAP_FUZZ_SEED", "20260105"))
MAX_BODY = 1024 * 1024
KEYS = (("testid", "testsecret"), ("otherid", "othersecret"))

ICE_ACTIONS = [
    "CreateLiveSnapshotTemplate", "UpdateLiveSnapshotTemplate", "DeleteLiveSnapshotTemplate",
    "GetLiveSnapshotTemplate", "ListLiveSnapshotTemplates", "SubmitLiveSnapshotJob",
    "GetLiveSnapshotJob", "ListLiveSnapshotJobs", "SendLiveSnapshotJobCommand",
    "ListLiveSnapshotFiles", "DeleteLiveSnapshotFiles",
]
# livesnap's extensions; DeleteLiveSnapshotJob deletes pooled jobs too (seeded or fuzzed): the
# pool keeps their ids, which then stand for jobs that do not exist
ACTIONS = [*ICE_ACTIONS, "ListLiveSnapshotCallbackAttempts", "ReplayLiveSnapshotCallbacks",
           "DeleteLiveSnapshotJob"]
SPEC_NAMES = [
    "TemplateName", "TimeInterval", "OverwriteFormat", "SequenceFormat", "TemplateId", "PageNo",
    "PageSize", "SortBy", "SearchKeyWord", "TemplateIds.1", "TemplateIds.2", "TemplateIds.201",
    "Type", "JobName", "StreamInput", "SnapshotOutput", "CallbackUrl", "JobId", "StartTime",
    "EndTime", "Status", "Command", "Limit", "CreateTimestampList", "DeleteOriginalFile",
    "ImageFormat", "Quality", "Width", "Height", "QualityGate", "LatestPointer",
    "DeleteOriginalFiles",
]
JUNK_NAMES = [
    "Action", "Version", "RegionId", "Format", "TemplateIds.0", "TemplateIds.-1",
    "TemplateIds.99999999999999999999", "TemplateIds.", "CreateTimestampList.1", "", "a=b",
    "&", "%", "%zz", " ", "JobId ", "jobid", "名字",
]
SIGNATURE_CODES = {
    "IncompleteSignature", "SignatureDoesNotMatch", "SignatureNonceUsed",
    "InvalidTimeStamp.Expired", "InvalidTimeStamp.Format", "InvalidAccessKeyId.NotFound",
}
# what a tampered request may be refused with (RPC reports missing common parameters first)
TAMPER_CODES = SIGNATURE_CODES | {"MissingParameter"}
FORM = "application/x-www-form-urlencoded"
RPC_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH"}

# --------------------------------------------------------------------------- values

SPECIAL = [
    "True", "true", "FALSE", "yes", "", " ", "0", "-1", "5", "3600", "3601", "4", "101",
    "1e3", "0x10", "５", "٣", "NaN", "Infinity", "-0", "99999999999999999999999", "\x00",
    "asc", "desc", "ASC", "system", "custom", "init", "started", "paused", "start", "stop",
    "restart", "capture", "jpg", "png", "webp",
    "2024-01-01T00:00:00Z", "2024-01-01T12:00:00Z", "2024-02-30T00:00:00Z",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2024-01-01T00:00:00.1234567Z",
    "2024-13-01T00:00:00Z", " 2024-01-01T00:00:00Z", "2024-01-01 00:00:00",
    "snapshot/{JobId}.jpg", "snapshot/{JobId}/{UnixTimestamp}.jpg", "/abs.jpg", "a/{Date}.jpg",
    "{Sequence}.jpg", "{JobId}{JobId}.png", "x.jpg" + "/" * 300, "{Unknown}.jpg", "{", "}",
]
URLS = [
    "rtmp://127.0.0.1:9/live/x", "rtmps://127.0.0.1:9/live/x", "rtmp://169.254.169.254/x",
    "rtmp://[fe80::1]/x", "rtmp://[::1]:9/x", "rtmp://localhost:9/a", "rtmp://", "ftp://x/y",
    "rtmp://127.0.0.1:99999/x", "rtmp://127.0.0.1:-1/x", "rtmp://user:pw@127.0.0.1:9/x",
    "rtmp://127.0.0.1:9/" + "x" * 300, "javascript:alert(1)", "http://127.0.0.1:9/cb",
    "https://127.0.0.1:9/cb?a=1", "http://100.100.100.200/", "srt://127.0.0.1:9",
    "rtsp://127.0.0.1:9/s", "http://[::ffff:169.254.169.254]/", "rtmp://0x7f.1/x",
    "http://%31%32%37.0.0.1:9/", "rtmp://127.0.0.1:9/live/\u202e", "rtmp://\x00/x",
    # host names the resolver's IDNA codec refuses, and one FFmpeg would resolve raw
    "rtmp://a..b/live/a", "http://a..b/cb", "rtmp://" + "a" * 64 + ".example/x",
    "http://\uff45\uff56\uff49\uff4c.example/cb", "RTMP://127.0.0.1:9/live/x",
]
JSON_JUNK = [
    "{", "}", "[", "{not json", "null", "1", '"s"', "[]", "{}", "[1]", "[1.5]", "[true]",
    "[9223372036854775808]", "[-9223372036854775809]", "[1000000000000000000000000000000]",
    "[null]", '["1"]', "[-1]", "[0]", "[1e400]", "[NaN]", "[Infinity]", "[-Infinity]",
    "[9223372036854775808]", "[1,1,1]", json.dumps(list(range(201))), "[" * 5000,
    '{"a":' * 3000, '{"Type":"rtmp","Url":1}', '{"Type":"rtmp"}', '{"Type":"hls","Url":"x"}',
    '{"Type":"rtmp","Url":"rtmp://127.0.0.1:9/live/x","Type":"x"}',
    '{"StorageType":"oss","Endpoint":"oss-cn-shanghai.aliyuncs.com"}',
    '{"StorageType":"local","Endpoint":"../../etc","Bucket":".."}',
    '{"StorageType":"s3","Endpoint":"http://127.0.0.1:9","Bucket":"b"}',
    '{"StorageType":"oss","Endpoint":"","Bucket":""}', '{"StorageType":1}',
    '\ufeff{"Type":"rtmp","Url":"rtmp://127.0.0.1:9/live/x"}',
]


def _stream_input(url: str, kind: str = "rtmp") -> str:
    return json.dumps({"Type": kind, "Url": url})


def _output(storage: str, endpoint: str, bucket: str) -> str:
    return json.dumps({"StorageType": storage, "Endpoint": endpoint, "Bucket": bucket})


huge = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "€", "%", "&=", "\x00", "{"]),
                 st.sampled_from([256, 4096, 70_000, 300_000, MAX_BODY + 100]))
json_values = st.one_of(
    st.sampled_from(JSON_JUNK),
    st.builds(_stream_input, st.sampled_from(URLS), st.sampled_from(["rtmp", "RTMP", "", "hls"])),
    st.builds(_output, st.sampled_from(["oss", "s3", "local", "OSS", "nfs", ""]),
              st.sampled_from(["oss-cn-shanghai.aliyuncs.com", "127.0.0.1:9", "", "a" * 300,
                               "http://x", "../.."]),
              st.sampled_from(["bucket-1", "B", "", "a" * 70, "../x", "a/b"])),
    st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=5).map(json.dumps),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(json.dumps),
)


@dataclass
class Pools:
    """Ids that exist on the server (seeded, then whatever the fuzzer creates)."""

    templates: list[str] = field(default_factory=lambda: ["system"])
    jobs: list[str] = field(default_factory=list)
    nonces: dict[str, str] = field(default_factory=dict)  # key id -> a nonce already used


POOLS = Pools()


@st.composite
def known_id(draw, kind: str) -> str:
    """An id that exists (mostly). The pools grow during the run, so the draws must not depend
    on their size: hypothesis replays a failing example and checks that it draws alike."""
    pool = POOLS.templates if kind == "template" else POOLS.jobs
    miss = draw(st.integers(0, 9)) == 0
    other = draw(st.sampled_from([str(uuid.uuid4()), "", "system", "../x", "A" * 200]))
    index = draw(st.integers(0, 2**16))
    return other if miss or not pool else pool[index % len(pool)]


values = st.one_of(
    st.text(max_size=40), st.sampled_from(SPECIAL), st.sampled_from(URLS), json_values,
    st.integers(min_value=-(2**70), max_value=2**70).map(str), known_id("template"),
    known_id("job"), huge,
)
names = st.one_of(st.sampled_from(SPEC_NAMES), st.sampled_from(JUNK_NAMES), st.text(max_size=12))

# --------------------------------------------------------------------------- plausible requests


def _window() -> st.SearchStrategy[dict[str, str]]:
    day = st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T10:00:00Z", "2026-01-05T00:00:00Z"])
    return st.fixed_dictionaries({"StartTime": day, "EndTime": day})


def _template_fields() -> st.SearchStrategy[dict[str, str]]:
    overwrite = st.sampled_from(["snapshot/{JobId}.jpg", "o/{JobId}.jpg"])
    sequence = st.sampled_from(["snapshot/{JobId}/{UnixTimestamp}.jpg", "s/{Date}/{Sequence}.jpg"])
    formats = st.one_of(
        st.fixed_dictionaries({"OverwriteFormat": overwrite}),
        st.fixed_dictionaries({"SequenceFormat": sequence}),
        st.fixed_dictionaries({"OverwriteFormat": overwrite, "SequenceFormat": sequence}),
    )
    fields = st.fixed_dictionaries(
        {"TemplateName": st.text(max_size=20).map(lambda t: "t" + t),
         "TimeInterval": st.integers(5, 3600).map(str)},
        optional={
            "ImageFormat": st.sampled_from(["jpg", "jpg", "png", "webp"]),
            "Quality": st.integers(1, 100).map(str),
            "Width": st.integers(0, 4096).map(str),
            "QualityGate": st.sampled_from(["True", "false"]),
        },
    )
    return st.builds(lambda f, g: {**f, **g}, fields, formats)


@cache
def _plausible(action: str) -> st.SearchStrategy[dict[str, str]]:
    template, job = known_id("template"), known_id("job")
    url = st.sampled_from([*URLS[:2], "rtmp://127.0.0.1:9/live/fuzz"])
    output = st.just(_output("oss", "oss-cn-shanghai.aliyuncs.com", "bucket-1"))
    table: dict[str, st.SearchStrategy[dict[str, str]]] = {
        "CreateLiveSnapshotTemplate": _template_fields(),
        "UpdateLiveSnapshotTemplate": st.builds(lambda t, f: {"TemplateId": t, **f}, template,
                                                _template_fields()),
        "DeleteLiveSnapshotTemplate": st.fixed_dictionaries({"TemplateId": template}),
        "GetLiveSnapshotTemplate": st.fixed_dictionaries({"TemplateId": template}),
        "ListLiveSnapshotTemplates": st.fixed_dictionaries({}, optional={
            "PageNo": st.integers(1, 3).map(str), "PageSize": st.integers(1, 100).map(str),
            "SortBy": st.sampled_from(["asc", "desc"]), "Type": st.sampled_from(["system", "custom"]),
            "SearchKeyWord": st.text(max_size=5), "TemplateIds.1": template}),
        "SubmitLiveSnapshotJob": st.fixed_dictionaries(
            {"JobName": st.text(min_size=1, max_size=20), "TemplateId": template,
             "StreamInput": url.map(_stream_input), "SnapshotOutput": output},
            optional={"CallbackUrl": st.sampled_from(["http://127.0.0.1:9/cb",
                                                      "https://127.0.0.1:9/cb"])}),
        "GetLiveSnapshotJob": st.fixed_dictionaries({"JobId": job}),
        "ListLiveSnapshotJobs": st.fixed_dictionaries({}, optional={
            "Status": st.sampled_from(["init", "started", "paused"]),
            "SearchKeyWord": st.text(max_size=5), "PageSize": st.integers(1, 100).map(str)}),
        "SendLiveSnapshotJobCommand": st.fixed_dictionaries(
            {"JobId": job, "Command": st.sampled_from(["start", "stop", "restart", "capture"])}),
        "ListLiveSnapshotFiles": st.builds(lambda j, w: {"JobId": j, **w}, job, _window()),
        "DeleteLiveSnapshotFiles": st.fixed_dictionaries(
            {"JobId": job, "CreateTimestampList": st.lists(st.integers(0, 2**41), max_size=3)
             .map(json.dumps)}, optional={"DeleteOriginalFile": st.sampled_from(["True", "false"])}),
        "ListLiveSnapshotCallbackAttempts": st.fixed_dictionaries({"JobId": job}),
        "ReplayLiveSnapshotCallbacks": st.fixed_dictionaries({"JobId": job}),
        "DeleteLiveSnapshotJob": st.fixed_dictionaries({"JobId": job}, optional={
            "DeleteOriginalFiles": st.sampled_from(["True", "false", "yes"])}),
    }
    return table[action]


@st.composite
def parameters(draw, action: str) -> list[tuple[str, str]]:
    """Nearly valid for the action (then mutated), or random names and values."""
    if action in ACTIONS and draw(st.integers(0, 9)) < 9:
        pairs = list(draw(_plausible(action)).items())
        for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
            mutation = draw(st.sampled_from(["drop", "junk", "add", "duplicate"]))
            if mutation == "drop" and pairs:
                pairs.pop(draw(st.integers(0, len(pairs) - 1)))
            elif mutation == "junk" and pairs:
                i = draw(st.integers(0, len(pairs) - 1))
                pairs[i] = (pairs[i][0], draw(values))
            elif mutation == "duplicate" and pairs:
                pairs.append((pairs[draw(st.integers(0, len(pairs) - 1))][0], draw(values)))
            else:
                pairs.append((draw(names), draw(values)))
        return pairs
    return draw(st.lists(st.tuples(names, values), max_size=8))


# --------------------------------------------------------------------------- wire requests


@dataclass
class Wire:
    """One HTTP request as it goes on the wire, and what the fuzzer expects of it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    chunked: bool
    tampered: str | None
    action: str
    key_id: str
    nonce: str

    @property
    def oversized(self) -> bool:
        return len(self.body) > MAX_BODY or len(self.path) > 60_000

    @property
    def bad_head(self) -> bool:
        """A header value HTTP does not allow (control characters): refused by the server's
        HTTP layer before the API sees it."""
        return any(not _header_char(c) for v in self.headers.values() for c in v)


def _header_char(c: str) -> bool:
    return c not in "\x00\n\r\x0b\x0c"  # what h11 accepts inside a header value


@st.composite
def wire_requests(draw, port: int) -> Wire:
    roll = draw(st.integers(0, 19))
    if roll < 17:
        action = draw(st.sampled_from(ACTIONS))
    elif roll < 19:
        action = draw(st.sampled_from(["", "DescribeNothing", "createlivesnapshottemplate",
                                       "GetLiveSnapshotJob ", "Get\x00", "ＧetLiveSnapshotJob"]))
    else:
        action = draw(st.text(max_size=12))
    pairs = draw(parameters(action))
    scheme = draw(st.sampled_from(["rpc", "acs3"]))
    if scheme == "rpc":  # a business parameter named Signature would not be signed (spec §6.2)
        pairs = [(k, v) for k, v in pairs if k != "Signature"]
    placement = draw(st.sampled_from(["query", "form", "split"]))
    in_body = {"query": [], "form": pairs, "split": pairs[1::2]}[placement]
    in_query = [p for p in pairs if p not in in_body] if placement == "split" else (
        pairs if placement == "query" else [])
    method = draw(st.sampled_from(["GET"] * 7 + ["POST"] * 9 + ["PUT", "DELETE", "PATCH"]
                                  + ["OPTIONS", "TRACE", "FOO"]))
    content_type = draw(st.sampled_from([FORM] * 10 + [f"{FORM}; charset=UTF-8", "text/plain",
                                          "application/json", None])) if in_body else None
    chunked = bool(in_body) and draw(st.integers(0, 4)) == 0
    tamper = draw(st.sampled_from([None] * 36 + ["secret", "key", "expired", "future", "replay",
                                                 "signature", "param", "unsigned", "header"]))
    key_id, secret = draw(st.sampled_from(KEYS))
    if tamper == "replay" and key_id not in POOLS.nonces:
        tamper = None
    sign_secret = "wrong-secret" if tamper == "secret" else secret
    sign_key = "nobody" if tamper == "key" else key_id
    now = datetime.now(tz=UTC) + {"expired": timedelta(minutes=-20),
                                  "future": timedelta(minutes=20)}.get(tamper or "", timedelta())
    nonce = POOLS.nonces[key_id] if tamper == "replay" else uuid.uuid4().hex
    body = urlencode(in_body).encode()
    junk_body = draw(st.sampled_from([None] * 15 + [b"\xff\xfe=\x80", b"a=%FF%FE", b"=&&=",
                                                    b"%", b"a" * 10]))
    if scheme == "acs3" and in_body and junk_body is not None:
        body = junk_body  # covered by x-acs-content-sha256, so still properly signed
    if scheme == "rpc":
        signed_body = in_body if content_type and content_type.startswith(FORM) else []
        query = rpc_query(action, in_query, key_id=sign_key, secret=sign_secret, method=method,
                          body=signed_body, now=now, nonce=nonce)
        headers = {"content-type": content_type} if content_type else {}
    else:
        # a header carries the action: no line breaks; other text goes out as raw UTF-8 bytes
        action = action.replace("\r", "").replace("\n", "").encode().decode("latin-1")
        query = urlencode(in_query)
        if draw(st.integers(0, 5)) == 0:
            query += draw(st.sampled_from(["&%zz", "&%FF=%FE", "&a", "&&", "&=x", "&%2"]))
        headers = acs3_headers(action, method=method, host=f"127.0.0.1:{port}", raw_query=query,
                               body=body, content_type=content_type, key_id=sign_key,
                               secret=sign_secret, now=now, nonce=nonce)
    query, headers, body = _tamper(tamper, scheme, query, headers, body)
    return Wire(method=method, path="/?" + query if query else "/", headers=headers, body=body,
                chunked=chunked, tampered=tamper, action=action, key_id=key_id, nonce=nonce)


def _tamper(tamper: str | None, scheme: str, query: str, headers: dict[str, str],
            body: bytes) -> tuple[str, dict[str, str], bytes]:
    """Break a signed request after signing (the other tamper kinds were signed wrongly)."""
    if tamper == "signature":
        if scheme == "rpc":
            query += "A"  # the Signature parameter is last
        else:
            auth = headers["authorization"]
            flipped = "0" if auth[-1] != "0" else "1"
            headers = {**headers, "authorization": auth[:-1] + flipped}
    elif tamper == "param":
        body_is_signed = scheme == "acs3" or headers.get("content-type", "").startswith(FORM)
        if body and body_is_signed:
            body += b"&JobId=evil"
        else:
            query = "JobId=evil&" + query
    elif tamper == "unsigned":
        if scheme == "rpc":
            query = query.rsplit("&Signature=", 1)[0]
        else:
            headers = {k: v for k, v in headers.items() if k != "authorization"}
    elif tamper == "header":
        if scheme == "rpc":
            query = query.replace("&Timestamp=", "&Timestam=")
        else:
            headers = {k: v for k, v in headers.items() if k != "x-acs-date"}
    return query, headers, body


# --------------------------------------------------------------------------- client and DB


class Client:
    """A keep-alive HTTP/1.1 connection that sends exactly the bytes it is given."""

    # the server closes a connection idle for LIVESNAP_KEEP_ALIVE_S; a request sent as it does
    # so gets no answer (the usual keep-alive race), so an idle connection is replaced
    IDLE_S = 2.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.last_used = time.monotonic()

    def send(self, wire: Wire) -> tuple[int, bytes]:
        if time.monotonic() - self.last_used > self.IDLE_S:
            self.conn.close()  # reopened by the next request
        body: bytes | Iterator[bytes] | None = wire.body or None
        if wire.chunked and wire.body:
            body = iter([wire.body[i:i + 65536] for i in range(0, len(wire.body), 65536)])
        try:
            self.conn.request(wire.method, wire.path, body=body, headers=wire.headers,
                              encode_chunked=wire.chunked and bool(wire.body))
        except (BrokenPipeError, ConnectionResetError):
            # refused early (413, or a head over the limit): the answer is waiting unread
            pass
        try:
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            self.conn.close()
            raise AssertionError(f"no answer to {wire.method} {wire.path[:200]}") from exc
        if resp.will_close:
            self.conn.close()
        self.last_used = time.monotonic()
        return resp.status, data


class Database:
    """The server's SQLite file, read from the side (WAL: readers never block the server)."""

    IGNORED: ClassVar = {"outbox_events", "delivery_attempts", "alembic_version"}
    VOLATILE: ClassVar = {"jobs": {"last_error", "modified_ms"}}

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self._version = -1
        self._digest: dict[str, list[tuple]] = {}

    def version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def digest(self) -> dict[str, list[tuple]]:
        """Stored data, cached while no other connection has committed anything."""
        version = self.version()
        if version != self._version:
            self._digest = self._read()
            self._version = version
        return self._digest

    def _read(self) -> dict[str, list[tuple]]:
        tables = [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        out: dict[str, list[tuple]] = {}
        for table in sorted(set(tables) - self.IGNORED):
            columns = [r[1] for r in self.db.execute(f"PRAGMA table_info({table})")
                       if r[1] not in self.VOLATILE.get(table, set())]
            cols = ", ".join(f'"{c}"' for c in columns)
            out[table] = sorted(self.db.execute(f'SELECT {cols} FROM "{table}"').fetchall(),
                                key=repr)
        return out

    def job_probe_done(self, job_id: str) -> bool:
        row = self.db.execute("SELECT last_error, status FROM jobs WHERE id = ?",
                              (job_id,)).fetchone()
        return row is not None and (row[0] != "" or row[1] != "init")

    def job_status(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else str(row[0])


# --------------------------------------------------------------------------- the test


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    tampered: int = 0
    changes_checked: int = 0
    restarts_refused: int = 0


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    env = {"LIVESNAP_CAPTURE": "false", "LIVESNAP_RATE_LIMIT_RPS": "0"}
    with LivesnapServer(tmp_path_factory.mktemp("fuzz") / "data", env=env) as srv:
        yield srv


def _seed_data(client: Client, db: Database, port: int) -> None:
    """A template and a job (with a callback URL) in each account."""
    for key_id, secret in KEYS:
        for action, params in (
            ("CreateLiveSnapshotTemplate", {"TemplateName": f"seed {key_id}", "TimeInterval": "5",
                                            "OverwriteFormat": "s/{JobId}.jpg"}),
            ("SubmitLiveSnapshotJob", {"JobName": f"seed {key_id}", "TemplateId": "system",
                                       "StreamInput": _stream_input(URLS[0]),
                                       "SnapshotOutput": _output("oss", "oss-cn-shanghai.aliyuncs.com", "bucket-1"),
                                       "CallbackUrl": "http://127.0.0.1:9/cb"}),
        ):
            pairs = list(params.items())
            query = rpc_query(action, [], key_id=key_id, secret=secret, method="POST", body=pairs)
            wire = Wire(method="POST", path="/?" + query, headers={"content-type": FORM},
                        body=urlencode(pairs).encode(), chunked=False, tampered=None,
                        action=action, key_id=key_id, nonce="")
            status, data = client.send(wire)
            assert status == 200, data
            _remember(action, json.loads(data), db)


def _remember(action: str, body: dict, db: Database) -> None:
    """Add created ids to the pools; wait for a new job's background probe to finish."""
    # (a duplicated Action parameter may have routed the request elsewhere)
    if action == "CreateLiveSnapshotTemplate" and "TemplateId" in body:
        POOLS.templates.append(body["TemplateId"])
    if action == "SubmitLiveSnapshotJob" and "JobId" in body:
        POOLS.jobs.append(body["JobId"])
        deadline = time.monotonic() + 15
        while not db.job_probe_done(body["JobId"]):
            assert time.monotonic() < deadline, "the submit probe did not finish"
            time.sleep(0.01)


def _check(wire: Wire, status: int, data: bytes, tally: Tally) -> dict:
    where = f"{wire.method} {wire.path[:300]} {wire.headers} body={wire.body[:300]!r}"
    assert status < 500, f"{status} {data[:500]!r} for {where}"
    body = json.loads(data)
    assert isinstance(body, dict) and isinstance(body.get("RequestId"), str) and body["RequestId"]
    if status >= 400:
        assert 400 <= status < 500
        assert {"RequestId", "Code", "Message", "HostId"} <= set(body), body
        assert isinstance(body["Code"], str) and body["Code"] and isinstance(body["Message"], str)
        tally.codes[body["Code"]] += 1
    else:
        assert status == 200 and "Code" not in body, body
    if wire.bad_head:
        assert status == 400 and "request line and headers" in body["Message"], (body, where)
        return body
    if wire.oversized:  # 413, or 400 from the HTTP layer; either way checked above
        return body
    if wire.method not in RPC_METHODS:  # refused before anything else is looked at
        assert status == 405 and body["Code"] == "UnsupportedHTTPMethod", (body, where)
        return body
    if wire.tampered:
        assert status >= 400 and body["Code"] in TAMPER_CODES, (wire.tampered, body, where)
    if not wire.tampered and status >= 400:
        assert body["Code"] not in SIGNATURE_CODES, (body, where)
    return body


@pytest.mark.timeout(max(300, EXAMPLES // 10))  # the extended run: about 25 requests/s
def test_fuzzed_requests_get_ice_answers_and_refusals_change_nothing(fuzz_server):
    port = fuzz_server.port
    client = Client(port)
    db = Database(fuzz_server.data_dir / "livesnap.db")
    _seed_data(client, db, port)
    tally = Tally()
    started = time.monotonic()

    @seed(SEED)
    # no shrinking: a failing request is printed whole, and shrinking megabyte-sized
    # requests can take minutes
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        wire = data.draw(wire_requests(port))
        before = db.digest()
        status, raw = client.send(wire)
        tally.sent += 1
        tally.statuses[status] += 1
        tally.tampered += bool(wire.tampered)
        body = _check(wire, status, raw, tally)
        if status == 200:
            if not wire.tampered:
                POOLS.nonces[wire.key_id] = wire.nonce
            _remember(wire.action, body, db)
            return
        after = db.digest()
        tally.changes_checked += 1
        if after == before:
            return
        # the one refusal that changes data: restart = stop, then a start that fails
        # (docs/reliability.md); the stop half stays in effect
        job_id = dict(_pairs_of(wire)).get("JobId", "")
        assert body["Code"] == "StreamNotFound" and db.job_status(job_id) == "paused", (
            f"refused request changed stored data: {body} for {wire.method} {wire.path[:300]}")
        tally.restarts_refused += 1

    try:
        one_request()
    finally:
        client.conn.close()
        db.db.close()
    elapsed = time.monotonic() - started
    # what the run covered: these fail if the generator stops producing varied requests
    assert tally.sent >= EXAMPLES
    assert tally.statuses[200] >= EXAMPLES // 50
    assert tally.tampered >= EXAMPLES // 20
    assert len(tally.codes) >= min(12, 6 + EXAMPLES // 200), tally.codes
    assert {"InvalidParameter", "MissingParameter", "SignatureDoesNotMatch"} <= set(tally.codes)
    record = {"requests": tally.sent, "seconds": round(elapsed, 1), "5xx": 0,
              "statuses": dict(tally.statuses), "codes": dict(tally.codes),
              "refusals_checked": tally.changes_checked,
              "restart_refusals": tally.restarts_refused, "seed": SEED}
    out = Path(os.environ.get("LIVESNAP_FUZZ_REPORT", fuzz_server.data_dir.parent / "fuzz.json"))
    out.write_text(json.dumps(record, indent=1))


def _pairs_of(wire: Wire) -> list[tuple[str, str]]:
    query = wire.path.partition("?")[2]
    pairs = parse_qsl(query, keep_blank_values=True)
    try:
        pairs += parse_qsl(wire.body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return pairs
    return pairs


def test_refused_restart_keeps_its_stop(fuzz_server):
    """The one refusal the fuzzer allows to change data, pinned here because the quick run
    may not draw it: ``restart`` is stop then start (docs/architecture.md §4), and when the
    start fails (``StreamNotFound``) the stop stays in effect."""
    sdk = ice_client(fuzz_server.endpoint)
    job_id = sdk.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="restart", template_id="system",
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=URLS[0]),
        snapshot_output=m.SubmitLiveSnapshotJobRequestSnapshotOutput(
            storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"),
    )).body.job_id
    get = m.GetLiveSnapshotJobRequest(job_id=job_id)
    assert sdk.get_live_snapshot_job(get).body.status == "init"
    with pytest.raises(TeaException) as info:
        sdk.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="restart"))
    assert (info.value.code, info.value.status_code) == ("StreamNotFound", 400)
    assert sdk.get_live_snapshot_job(get).body.status == "paused"
