#!/usr/bin/env python3
"""NTLM acceptor in front of an HTTP upstream, imitating IIS in front of Exchange EWS.

The test peer for exchange-sync's NTLM client: it checks real NTLMv2 responses (and, with
--require-cbt, Extended Protection channel bindings) with pyspnego's pure-Python acceptor, then
proxies authenticated requests to a plain HTTP upstream such as the fake Exchange server.

    python3 ntlm_proxy.py --upstream http://127.0.0.1:PORT --users-file FILE [--port 0]
        [--tls-cert CERT.pem --tls-key KEY.pem] [--require-cbt] [--stats-file FILE]
    python3 ntlm_proxy.py --self-test

Users file: one `DOMAIN:USER:PASSWORD` per line (pyspnego's NTLM_USER_FILE format; the domain must
match the one the client puts in its Type3, case-insensitively; use `:user@example.com:pw` for a
UPN with an empty domain).

Wire behaviour (compare samples/ews/ntlm-handshake-exchange2010sp2.trace.txt):
- NTLM is connection-bound, as on IIS: each TCP connection has its own handshake state, and a
  Type3 is only accepted on the connection that carried the matching Type1.
- No Authorization on an unauthenticated connection -> 401, `WWW-Authenticate: NTLM` and
  `WWW-Authenticate: Negotiate`, Content-Length 0. The connection stays open.
- Type1 -> 401 with `WWW-Authenticate: NTLM <Type2>` (plus a bare `Negotiate`, as IIS sends). A
  client that used the `Negotiate` scheme with a raw NTLM token gets `Negotiate <Type2>` instead,
  as IIS answers in the scheme the client chose.
- Type3 accepted -> the request is forwarded upstream; the response gets `Persistent-Auth: true`
  and the connection stays authenticated, so later requests without Authorization are forwarded.
- Type3 rejected -> 401 with the IIS "invalid credentials" body and a log line on stderr.
- Every response carries `X-Client-Port` (the client's TCP port) so tests can see reuse.

Statistics: `GET /__stats` (no auth) and, with --stats-file, a JSON file rewritten atomically on
every change. ports_per_handshake holds [first leg, Type1, Type3] client ports per completed
handshake. The first leg is the anonymous request that drew the bare 401: taken from the same
connection when it had one there. When the Type1 is instead the first request on a new connection,
it is the most recent anonymous 401 of the last 10 s on another connection that no Type1 followed
(the client dropped or ignored the connection it was challenged on); this attribution is best
effort when several clients misbehave at once. Otherwise (a Type1 sent straight away on a new
connection, or a re-authentication on a used one) it is the Type1's own port. Type1 and Type3
always share a port in a completed handshake, because a split one cannot complete.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    import spnego
    import spnego.channel_bindings
    import spnego.exceptions
except ImportError:  # pragma: no cover - only hit in a wrong environment
    sys.stderr.write(
        "ntlm_proxy: Python package 'pyspnego' is missing; install it with\n"
        "  python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt\n"
    )
    sys.exit(2)

INVALID_CREDENTIALS_BODY = b"401 - Unauthorized: Access is denied due to invalid credentials."
NTLM_SIGNATURE = b"NTLMSSP\x00"
# MS-NLMP AvId of MsvAvChannelBindings.
AV_CHANNEL_BINDINGS = 0x000A
# How long an anonymous 401 on one connection may be attributed to a Type1 on another one.
ORPHAN_ANONYMOUS_TTL = 10.0
UPSTREAM_TIMEOUT = 120.0


def log(msg: str) -> None:
    sys.stderr.write(f"ntlm_proxy: {msg}\n")
    sys.stderr.flush()


def ntlm_message_type(token: bytes) -> int | None:
    """1, 2 or 3 for an NTLMSSP message, None for anything else (e.g. a SPNEGO/Kerberos token)."""
    if len(token) < 12 or token[:8] != NTLM_SIGNATURE:
        return None
    return struct.unpack("<I", token[8:12])[0]


def type3_channel_bindings(token: bytes) -> bytes | None:
    """The MsvAvChannelBindings value of an NTLMv2 Type3, or None (absent, or an NTLMv1 response).

    pyspnego rejects a missing or wrong value but lets an all-zero one through and never checks
    NTLMv1 responses, which cannot carry bindings; --require-cbt closes both gaps with this.
    """
    try:
        nt_len, _max, nt_off = struct.unpack("<HHI", token[20:28])
        nt = token[nt_off : nt_off + nt_len]
        if len(nt) <= 24:
            return None
        # NTLMv2 response: NTProofStr (16) + RespType, HiRespType, Reserved1 (2), Reserved2 (4),
        # TimeStamp (8), ChallengeFromClient (8), Reserved3 (4), then the AV pairs.
        pos = 16 + 28
        while pos + 4 <= len(nt):
            av_id, av_len = struct.unpack("<HH", nt[pos : pos + 4])
            if av_id == 0:  # MsvAvEOL
                return None
            value = nt[pos + 4 : pos + 4 + av_len]
            if av_id == AV_CHANNEL_BINDINGS:
                return value
            pos += 4 + av_len
    except struct.error:
        pass
    return None


def tls_server_end_point_bindings(cert_pem_path: str) -> spnego.channel_bindings.GssChannelBindings:
    """RFC 5929 tls-server-end-point bindings for the server certificate, as Windows computes them."""
    with open(cert_pem_path, "rb") as f:
        pem = f.read()
    match = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if not match:
        raise SystemExit(f"ntlm_proxy: no certificate found in {cert_pem_path}")
    der = ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
    # RFC 5929 §4.1: the certificate's own signature hash, but SHA-256 for MD5/SHA-1 signatures.
    hash_name = "sha256"
    try:
        from cryptography import x509

        algo = x509.load_der_x509_certificate(der).signature_hash_algorithm
        if algo is not None and algo.name in ("sha384", "sha512"):
            hash_name = algo.name
    except Exception:  # cryptography comes with pyspnego; fall back to the common case if not
        pass
    digest = hashlib.new(hash_name, der).digest()
    return spnego.channel_bindings.GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


class Stats:
    """Counters plus per-connection records, shared by all handler threads."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.handshakes_ok = 0
        self.handshakes_failed = 0
        self.handshakes_abandoned = 0
        self.failures: list[str] = []
        self.requests_forwarded = 0
        self.ports_per_handshake: list[list[int]] = []
        self.connections: list[dict] = []
        # Connections whose anonymous 401 was not followed by a Type1 on the same connection.
        self.orphan_anonymous: list[tuple[float, ConnState]] = []
        # Connections that have a Type1 outstanding, to explain a Type3 that arrives elsewhere.
        self.pending_type1: list[ConnState] = []
        self.next_id = 1

    def snapshot(self) -> dict:
        return {
            "handshakes_ok": self.handshakes_ok,
            "handshakes_failed": self.handshakes_failed,
            "failures": list(self.failures),
            "requests_forwarded": self.requests_forwarded,
            "ports_per_handshake": [list(p) for p in self.ports_per_handshake],
            "handshakes_abandoned": self.handshakes_abandoned,
            "connections": [dict(c, legs=list(c["legs"]), failures=list(c["failures"])) for c in self.connections],
        }

    def to_json(self) -> bytes:
        with self.lock:
            return json.dumps(self.snapshot(), indent=1).encode()

    def changed(self) -> None:
        """Rewrite the stats file; the caller holds self.lock."""
        if not self.path:
            return
        # Write-then-rename so a reader never sees a half-written file.
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f, indent=1)
        os.replace(tmp, self.path)


class ConnState:
    """NTLM state of one TCP connection (IIS binds the NTLM context to the connection)."""

    def __init__(self, stats: Stats, port: int) -> None:
        self.port = port
        self.ctx = None  # spnego server context, created by a Type1
        self.scheme = "NTLM"  # scheme of the handshake in progress, echoed in the Type2
        self.first_leg_port: int | None = None
        self.anonymous_pending = False
        self.authenticated = False
        self.requests = 0  # requests seen on this connection, including the current one
        with stats.lock:
            self.record = {
                "id": stats.next_id,
                "port": port,
                "legs": [],
                "authenticated": False,
                "handshakes_ok": 0,
                "failures": [],
                "requests_forwarded": 0,
                "closed": False,
            }
            stats.next_id += 1
            stats.connections.append(self.record)
            stats.changed()


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, *, upstream, stats, ssl_context, bindings, require_cbt):
        super().__init__(addr, handler)
        self.upstream = upstream
        self.stats = stats
        self.ssl_context = ssl_context
        self.bindings = bindings
        self.require_cbt = require_cbt

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the per-connection thread, so that a slow or broken
        # client cannot stall the accept loop.
        if self.ssl_context is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        try:
            request.settimeout(30)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log(f"port {client_address[1]}: TLS handshake failed: {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    # IIS closes idle keep-alive connections after 120 s.
    timeout = 120
    server: ProxyServer

    def version_string(self) -> str:
        # Just "Microsoft-IIS/10.0", without BaseHTTPRequestHandler's Python version suffix.
        return self.server_version

    # --- connection lifecycle -------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.conn = ConnState(self.server.stats, self.client_address[1])

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            stats = self.server.stats
            with stats.lock:
                self.conn.record["closed"] = True
                if self.conn.ctx is not None:
                    # A Type1 that never saw its Type3 here: a client that gave up, or one that
                    # sent the Type3 on another connection (that one is counted as a failure).
                    stats.handshakes_abandoned += 1
                    self.conn.record["legs"].append("closed-mid-handshake")
                # An unanswered anonymous 401 stays claimable after the close: dropping the
                # challenged connection and sending the Type1 on a new one is what it detects.
                stats.pending_type1 = [c for c in stats.pending_type1 if c is not self.conn]
                stats.changed()

    def _forget_pending(self, stats: Stats) -> None:
        stats.orphan_anonymous = [(t, c) for (t, c) in stats.orphan_anonymous if c is not self.conn]
        stats.pending_type1 = [c for c in stats.pending_type1 if c is not self.conn]

    def log_message(self, format: str, *args) -> None:
        log(f"port {self.client_address[1]}: {format % args}")

    # --- request plumbing -------------------------------------------------------------------

    def read_body(self) -> bytes:
        """The whole request body (Content-Length or chunked); also drains it before a 401."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section, ended by an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("X-Client-Port", str(self.client_address[1]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def challenge_401(self) -> None:
        self.respond(401, [("WWW-Authenticate", "NTLM"), ("WWW-Authenticate", "Negotiate")])

    def reject(self, reason: str) -> None:
        """A failed handshake: IIS's invalid-credentials page; the client may start over."""
        stats = self.server.stats
        text = f"port {self.conn.port}: {reason}"
        log(f"NTLM authentication failed: {text}")
        self.conn.ctx = None
        self.conn.authenticated = False
        with stats.lock:
            stats.handshakes_failed += 1
            stats.failures.append(text)
            self.conn.record["failures"].append(reason)
            self.conn.record["legs"].append("rejected")
            self.conn.record["authenticated"] = False
            self._forget_pending(stats)
            stats.changed()
        self.respond(
            401,
            [
                ("Content-Type", "text/html"),
                ("WWW-Authenticate", "NTLM"),
                ("WWW-Authenticate", "Negotiate"),
            ],
            INVALID_CREDENTIALS_BODY,
        )

    def do_GET(self) -> None:
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # --- the NTLM state machine -------------------------------------------------------------

    def handle_any(self) -> None:
        try:
            body = self.read_body()
        except ValueError as e:
            # Framing is lost, so the connection cannot be reused.
            self.close_connection = True
            self.respond(400, [("Content-Type", "text/plain"), ("Connection", "close")], f"bad body: {e}".encode())
            return
        self.conn.requests += 1
        stats = self.server.stats
        if self.command == "GET" and self.path.split("?", 1)[0] == "/__stats":
            self.respond(200, [("Content-Type", "application/json")], stats.to_json())
            return

        scheme, token = self.parse_authorization()
        if scheme is None:
            if self.conn.authenticated:
                self.forward(body)
                return
            with stats.lock:
                self.conn.record["legs"].append("anonymous-401")
                if not self.conn.anonymous_pending:
                    self.conn.anonymous_pending = True
                    stats.orphan_anonymous.append((time.monotonic(), self.conn))
                stats.changed()
            self.challenge_401()
            return
        if token is None:
            self.reject(f"Authorization: {scheme} header with a token that is not valid base64")
            return

        msg_type = ntlm_message_type(token)
        if msg_type == 1:
            self.on_type1(scheme, token)
        elif msg_type == 3:
            self.on_type3(token, body)
        elif msg_type is None:
            self.reject(
                f"Authorization: {scheme} token is not an NTLMSSP message "
                "(SPNEGO-wrapped or Kerberos tokens are not supported by this acceptor)"
            )
        else:
            self.reject(f"unexpected NTLM message type {msg_type} from the client")

    def parse_authorization(self) -> tuple[str | None, bytes | None]:
        """(scheme, token) for `NTLM x` / `Negotiate x`; (None, None) if absent or another scheme."""
        value = self.headers.get("Authorization", "").strip()
        parts = value.split(None, 1)
        if len(parts) != 2 or parts[0].lower() not in ("ntlm", "negotiate"):
            return None, None
        scheme = "NTLM" if parts[0].lower() == "ntlm" else "Negotiate"
        try:
            return scheme, base64.b64decode(parts[1].strip(), validate=True)
        except ValueError:  # binascii.Error is a ValueError
            return scheme, None

    def on_type1(self, scheme: str, token: bytes) -> None:
        stats = self.server.stats
        # A Type1 always starts over, also on an authenticated connection (IIS re-authenticates).
        restarted_mid_handshake = self.conn.ctx is not None
        self.conn.authenticated = False
        self.conn.ctx = None
        try:
            ctx = spnego.server(
                protocol="ntlm",
                options=spnego.NegotiateOptions.use_ntlm,
                channel_bindings=self.server.bindings,
            )
            type2 = ctx.step(token)
        except spnego.exceptions.SpnegoError as e:
            self.reject(f"Type1 rejected: {type(e).__name__}: {e}")
            return
        with stats.lock:
            if restarted_mid_handshake:
                stats.handshakes_abandoned += 1
            self.conn.ctx = ctx
            self.conn.scheme = scheme
            self.conn.first_leg_port = self.claim_first_leg(stats)
            self.conn.record["legs"].append("type1")
            self.conn.record["authenticated"] = False
            stats.pending_type1.append(self.conn)
            stats.changed()
        challenge = [("WWW-Authenticate", f"{scheme} {base64.b64encode(type2).decode()}")]
        if scheme == "NTLM":
            # IIS also repeats a bare Negotiate next to the NTLM Type2 (see the trace).
            challenge.append(("WWW-Authenticate", "Negotiate"))
        self.respond(401, challenge)

    def claim_first_leg(self, stats: Stats) -> int:
        """Port of the anonymous request that led to this Type1; see the module doc."""
        if self.conn.anonymous_pending:
            self.conn.anonymous_pending = False
            self._forget_pending(stats)
            return self.conn.port
        if self.conn.requests > 1:
            return self.conn.port
        now = time.monotonic()
        stats.orphan_anonymous = [(t, c) for (t, c) in stats.orphan_anonymous if now - t <= ORPHAN_ANONYMOUS_TTL]
        if stats.orphan_anonymous:
            _, other = stats.orphan_anonymous.pop()
            other.anonymous_pending = False
            return other.port
        return self.conn.port

    def on_type3(self, token: bytes, body: bytes) -> None:
        stats = self.server.stats
        ctx = self.conn.ctx
        if ctx is None:
            with stats.lock:
                elsewhere = [c.port for c in stats.pending_type1 if c is not self.conn]
            hint = (
                f" (a Type1 is pending on port {elsewhere[-1]}: the client switched connections)" if elsewhere else ""
            )
            self.reject(f"Type3 without a preceding Type1 on this connection{hint}")
            return
        try:
            ctx.step(token)
        except spnego.exceptions.SpnegoError as e:
            self.reject(f"Type3 rejected: {type(e).__name__}: {e}")
            return
        if not ctx.complete:
            self.reject("Type3 did not complete the NTLM context")
            return
        if self.server.require_cbt:
            cbt = type3_channel_bindings(token)
            if cbt is None:
                self.reject("Type3 rejected: no channel bindings (NTLMv1 response) but --require-cbt is set")
                return
            if cbt == b"\x00" * 16:
                self.reject("Type3 rejected: all-zero channel bindings but --require-cbt is set")
                return
        principal = ctx.client_principal
        with stats.lock:
            stats.handshakes_ok += 1
            stats.ports_per_handshake.append(
                [self.conn.first_leg_port or self.conn.port, self.conn.port, self.conn.port]
            )
            self.conn.record["legs"].append("type3-ok")
            self.conn.record["handshakes_ok"] += 1
            self.conn.record["authenticated"] = True
            self.conn.record["principal"] = principal
            self.conn.ctx = None
            self.conn.authenticated = True
            self._forget_pending(stats)
            stats.changed()
        log(f"port {self.conn.port}: authenticated {principal}")
        self.forward(body)

    # --- upstream ---------------------------------------------------------------------------

    def forward(self, body: bytes) -> None:
        up = self.server.upstream
        headers = {}
        for name in ("Content-Type", "X-AnchorMailbox"):
            if self.headers.get(name) is not None:
                headers[name] = self.headers[name]
        send_body = body if body or self.command in ("POST", "PUT", "PATCH") else None
        # A fresh upstream connection per request keeps the proxy simple; the client-facing
        # connection is the one whose reuse matters for NTLM.
        conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.request(self.command, up.path.rstrip("/") + self.path, body=send_body, headers=headers)
            resp = conn.getresponse()
            resp_body = resp.read()
            status, content_type = resp.status, resp.getheader("Content-Type")
        except (OSError, http.client.HTTPException) as e:
            log(f"port {self.conn.port}: upstream {up.geturl()} failed: {e}")
            self.respond(502, [("Content-Type", "text/plain")], f"upstream failed: {e}".encode())
            return
        finally:
            conn.close()
        stats = self.server.stats
        with stats.lock:
            stats.requests_forwarded += 1
            self.conn.record["requests_forwarded"] += 1
            stats.changed()
        headers_out = [("Persistent-Auth", "true")]
        if content_type:
            headers_out.insert(0, ("Content-Type", content_type))
        self.respond(status, headers_out, resp_body)


def serve(args: argparse.Namespace) -> int:
    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme != "http" or not upstream.hostname:
        log(f"--upstream must be an http:// URL, got {args.upstream!r}")
        return 2
    users_file = os.path.abspath(args.users_file)
    if not os.path.isfile(users_file):
        log(f"--users-file {users_file} does not exist")
        return 2
    # pyspnego's acceptor reads the users from here on every Type3.
    os.environ["NTLM_USER_FILE"] = users_file
    if bool(args.tls_cert) != bool(args.tls_key):
        log("--tls-cert and --tls-key go together")
        return 2
    if args.require_cbt and not args.tls_cert:
        log("--require-cbt needs TLS (--tls-cert/--tls-key): channel bindings hash the server certificate")
        return 2

    ssl_context = None
    bindings = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.require_cbt:
            bindings = tls_server_end_point_bindings(args.tls_cert)

    stats = Stats(args.stats_file)
    server = ProxyServer(
        ("127.0.0.1", args.port),
        Handler,
        upstream=upstream,
        stats=stats,
        ssl_context=ssl_context,
        bindings=bindings,
        require_cbt=args.require_cbt,
    )
    with stats.lock:
        stats.changed()

    def on_signal(signum, _frame):
        log(f"signal {signum}: shutting down")
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheme = "https" if ssl_context else "http"
    print(f"listening on {scheme}://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


# --- self-test ------------------------------------------------------------------------------


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Echoes what it received, so the self-test can check what the proxy forwarded."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = {
            "method": self.command,
            "path": self.path,
            "body": body.decode(),
            "content_type": self.headers.get("Content-Type"),
            "anchor": self.headers.get("X-AnchorMailbox"),
            "authorization": self.headers.get("Authorization"),
        }
        _Upstream.seen.append(record)
        out = b"<?xml version='1.0'?><ok/>"
        self.send_response(200)
        self.send_header("Content-Type", "text/xml; charset=utf-8")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST

    def log_message(self, format: str, *args) -> None:
        pass


class _Check:
    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed += 1


def _request(conn: http.client.HTTPConnection, auth: str | None, body: bytes = b"<soap/>", extra=None):
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if auth:
        headers["Authorization"] = auth
    headers.update(extra or {})
    conn.request("POST", "/EWS/Exchange.asmx", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp, data


def _type2(resp, scheme: str = "NTLM") -> bytes | None:
    for value in resp.headers.get_all("WWW-Authenticate") or []:
        parts = value.split(None, 1)
        if len(parts) == 2 and parts[0] == scheme:
            return base64.b64decode(parts[1])
    return None


def _client(user: str, password: str, bindings=None):
    return spnego.client(
        user,
        password,
        hostname="127.0.0.1",
        service="HTTP",
        protocol="ntlm",
        options=spnego.NegotiateOptions.use_ntlm,
        channel_bindings=bindings,
    )


def _handshake(conn, user, password, bindings=None, scheme="NTLM", anonymous_first=True, body=b"<soap/>"):
    """Anonymous -> Type1 -> Type3 on one connection; returns (response, body) of the Type3 leg."""
    if anonymous_first:
        _request(conn, None, body)
    client = _client(user, password, bindings)
    resp, _ = _request(conn, f"{scheme} {base64.b64encode(client.step()).decode()}", body)
    type2 = _type2(resp, scheme)
    if type2 is None:
        return resp, b"<no Type2>"
    type3 = client.step(type2)
    return _request(
        conn,
        f"{scheme} {base64.b64encode(type3).decode()}",
        body,
        {"X-AnchorMailbox": "alice@example.com"},
    )


def _start_proxy(args: list[str], log_path: str) -> tuple[subprocess.Popen, int]:
    # The proxy's stderr goes to a file: a pipe nobody reads could fill up and block it.
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    line = proc.stdout.readline()
    match = re.fullmatch(r"listening on https?://127\.0\.0\.1:(\d+)\n", line)
    if not match:
        proc.kill()
        proc.wait()
        with open(log_path) as f:
            raise RuntimeError(f"proxy did not start: {line!r} {f.read()}")
    return proc, int(match.group(1))


def _stop_proxy(proc: subprocess.Popen, check: _Check, label: str, log_path: str) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    check(rc == 0, f"{label}: SIGTERM -> clean exit (rc={rc})")
    if check.failed:
        with open(log_path) as f:
            sys.stderr.write(f"--- {label} log ---\n{f.read()}")


def _make_cert(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with `cryptography` (a pyspnego dependency)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ntlm-proxy-selftest")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def _self_test_http(check: _Check, tmp: str, upstream_url: str, users: str) -> None:
    stats_file = os.path.join(tmp, "stats.json")
    log_path = os.path.join(tmp, "http-proxy.log")
    proc, port = _start_proxy(["--upstream", upstream_url, "--users-file", users, "--stats-file", stats_file], log_path)
    print(f"-- plain HTTP proxy on port {port}", flush=True)
    try:
        # 1. Correct password: anonymous 401, Type1 -> Type2, Type3 -> forwarded, then reuse.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        resp, data = _request(conn, None)
        challenges = resp.headers.get_all("WWW-Authenticate") or []
        check(
            resp.status == 401 and challenges == ["NTLM", "Negotiate"] and data == b"",
            f"anonymous request -> 401 with {challenges}, empty body",
        )
        client_port = conn.sock.getsockname()[1]
        client = _client("TESTDOM\\alice", "Secr3t!")
        resp, data = _request(conn, "NTLM " + base64.b64encode(client.step()).decode())
        type2 = _type2(resp)
        check(
            resp.status == 401 and type2 is not None and type2[:8] == NTLM_SIGNATURE and data == b"",
            "Type1 -> 401 with WWW-Authenticate: NTLM <Type2>",
        )
        type3 = client.step(type2)
        _Upstream.seen.clear()
        resp, data = _request(
            conn,
            "NTLM " + base64.b64encode(type3).decode(),
            b"<soap>payload</soap>",
            {"X-AnchorMailbox": "alice@example.com"},
        )
        seen = _Upstream.seen[-1] if _Upstream.seen else {}
        check(
            resp.status == 200
            and resp.getheader("Persistent-Auth") == "true"
            and resp.getheader("Content-Type") == "text/xml; charset=utf-8"
            and data == b"<?xml version='1.0'?><ok/>",
            "correct password: Type3 -> 200 relayed with Persistent-Auth: true",
        )
        check(
            seen.get("path") == "/EWS/Exchange.asmx"
            and seen.get("body") == "<soap>payload</soap>"
            and seen.get("anchor") == "alice@example.com"
            and seen.get("content_type") == "text/xml; charset=utf-8"
            and seen.get("authorization") is None,
            "upstream got method, path, body, Content-Type and X-AnchorMailbox (no Authorization)",
        )
        resp, data = _request(conn, None, b"<soap>second</soap>")
        check(
            resp.status == 200 and conn.sock.getsockname()[1] == client_port,
            "same connection, no Authorization -> forwarded (connection stays authenticated)",
        )
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        resp, _ = _request(other, None)
        check(resp.status == 401, "another connection without Authorization -> 401 (auth is per connection)")
        # A new Type1 on the authenticated connection restarts the handshake.
        resp, _ = _handshake(conn, "TESTDOM\\alice", "Secr3t!", anonymous_first=False)
        check(resp.status == 200, "new Type1 on an authenticated connection restarts the handshake -> 200")

        # 2. Wrong password.
        bad = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        resp, data = _handshake(bad, "TESTDOM\\alice", "wrong-password")
        check(
            resp.status == 401 and data == INVALID_CREDENTIALS_BODY,
            f"wrong password -> 401 {data.decode(errors='replace')!r}",
        )
        resp, _ = _request(bad, None)
        check(resp.status == 401, "after a rejected Type3 the connection is not authenticated")

        # Unknown user.
        resp, data = _handshake(http.client.HTTPConnection("127.0.0.1", port, timeout=10), "TESTDOM\\mallory", "x")
        check(resp.status == 401 and data == INVALID_CREDENTIALS_BODY, "unknown user -> 401 invalid credentials")

        # 3. Split connection: Type1 on one TCP connection, Type3 on another.
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        second = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        client = _client("TESTDOM\\alice", "Secr3t!")
        resp, _ = _request(first, "NTLM " + base64.b64encode(client.step()).decode())
        type3 = client.step(_type2(resp))
        resp, data = _request(second, "NTLM " + base64.b64encode(type3).decode())
        check(
            resp.status == 401 and data == INVALID_CREDENTIALS_BODY,
            "split connection (Type1 on one, Type3 on another) -> 401 invalid credentials",
        )
        first.close()

        # Negotiate scheme carrying a raw NTLM token (what some clients send).
        resp, _ = _handshake(
            http.client.HTTPConnection("127.0.0.1", port, timeout=10), "TESTDOM\\alice", "Secr3t!", scheme="Negotiate"
        )
        check(resp.status == 200, "Authorization: Negotiate <raw NTLM> -> Negotiate <Type2> -> 200")

        # A client that drops the challenged connection: anonymous on one, Type1+Type3 on a new one.
        # It works, but costs a connection per handshake; ports_per_handshake exposes it.
        dropped = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        _request(dropped, None)
        dropped_port = dropped.sock.getsockname()[1]
        dropped.close()
        fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        resp, _ = _handshake(fresh, "TESTDOM\\alice", "Secr3t!", anonymous_first=False)
        fresh_port = fresh.sock.getsockname()[1]
        check(resp.status == 200, "Type1 on a new connection after an anonymous 401 elsewhere -> 200")
        fresh.close()

        # Statistics over HTTP and in the file.
        stats_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stats_conn.request("GET", "/__stats")
        resp = stats_conn.getresponse()
        stats = json.loads(resp.read())
        check(
            stats["handshakes_ok"] == 4 and stats["handshakes_failed"] == 3 and stats["requests_forwarded"] == 5,
            f"/__stats: ok={stats['handshakes_ok']} failed={stats['handshakes_failed']} "
            f"forwarded={stats['requests_forwarded']} (want 4, 3, 5)",
        )
        per_handshake = stats["ports_per_handshake"]
        check(
            len(per_handshake) == 4
            and all(len(set(p)) == 1 for p in per_handshake[:3])
            and per_handshake[3] == [dropped_port, fresh_port, fresh_port],
            f"ports_per_handshake: 3 on one port each, then [{dropped_port}, {fresh_port}, {fresh_port}]: "
            f"{per_handshake}",
        )
        failures = stats["failures"]
        check(
            len(failures) == 3
            and "Invalid NTLM response" in failures[0]
            and "Failed to find any matching credential" in failures[1]
            and "without a preceding Type1" in failures[2],
            "failures name the reasons: " + json.dumps(failures),
        )
        with open(stats_file) as f:
            on_disk = json.load(f)
        check(on_disk["handshakes_ok"] == 4 and on_disk["failures"] == failures, "--stats-file matches /__stats")
        for c in (conn, other, bad, second, stats_conn):
            c.close()
    finally:
        _stop_proxy(proc, check, "http proxy", log_path)


def _self_test_tls(check: _Check, tmp: str, upstream_url: str, users: str) -> None:
    cert, key = _make_cert(tmp)
    log_path = os.path.join(tmp, "https-proxy.log")
    proc, port = _start_proxy(
        ["--upstream", upstream_url, "--users-file", users, "--tls-cert", cert, "--tls-key", key, "--require-cbt"],
        log_path,
    )
    print(f"-- HTTPS proxy with --require-cbt on port {port}", flush=True)
    tls_client = ssl.create_default_context(cafile=cert)

    def connect():
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls_client)
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        good = spnego.channel_bindings.GssChannelBindings(
            application_data=b"tls-server-end-point:" + hashlib.sha256(der).digest()
        )
        return conn, good

    try:
        conn, good = connect()
        resp, _ = _handshake(conn, "TESTDOM\\alice", "Secr3t!", bindings=good)
        check(resp.status == 200, "TLS, matching channel bindings -> 200")
        conn, _ = connect()
        resp, data = _handshake(conn, "TESTDOM\\alice", "Secr3t!")
        check(resp.status == 401 and data == INVALID_CREDENTIALS_BODY, "TLS, no channel bindings -> 401")
        conn, _ = connect()
        wrong = spnego.channel_bindings.GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x01" * 32)
        resp, _ = _handshake(conn, "TESTDOM\\alice", "Secr3t!", bindings=wrong)
        check(resp.status == 401, "TLS, wrong channel bindings -> 401")

        # An all-zero MsvAvChannelBindings passes pyspnego, so the proxy checks it itself. The
        # pyspnego client cannot send zeros, so hash a marker to zeros (private API, pinned version).
        import spnego._ntlm as ntlm_impl

        class _ZeroBindings(spnego.channel_bindings.GssChannelBindings):
            def pack(self) -> bytes:
                return b"zero-cbt-marker"

        real_md5 = ntlm_impl.md5
        ntlm_impl.md5 = lambda data: b"\x00" * 16 if data == b"zero-cbt-marker" else real_md5(data)
        try:
            conn, _ = connect()
            resp, _ = _handshake(conn, "TESTDOM\\alice", "Secr3t!", bindings=_ZeroBindings())
        finally:
            ntlm_impl.md5 = real_md5
        check(resp.status == 401, "TLS, all-zero channel bindings -> 401 under --require-cbt")

        conn.request("GET", "/__stats")
        stats = json.loads(conn.getresponse().read())
        failures = stats["failures"]
        check(
            stats["handshakes_ok"] == 1
            and len(failures) == 3
            and "BadBindingsError" in failures[0]
            and "not present" in failures[0]
            and "do not match" in failures[1]
            and "all-zero" in failures[2],
            "CBT failures: " + json.dumps(failures),
        )
    finally:
        _stop_proxy(proc, check, "https proxy", log_path)


def self_test() -> int:
    check = _Check()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_url = f"http://127.0.0.1:{upstream.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="ntlm-proxy-selftest-") as tmp:
        users = os.path.join(tmp, "ntlm.users")
        with open(users, "w") as f:
            f.write("TESTDOM:alice:Secr3t!\n")
        try:
            _self_test_http(check, tmp, upstream_url, users)
            _self_test_tls(check, tmp, upstream_url, users)
        except Exception as e:  # a crash is a failed self-test, not a traceback-only exit
            check(False, f"self-test crashed: {type(e).__name__}: {e}")
    upstream.shutdown()
    print(f"self-test: {'PASS' if check.failed == 0 else f'FAIL ({check.failed} checks failed)'}", flush=True)
    return 0 if check.failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--upstream", help="http://host:port of the EWS server to forward to")
    parser.add_argument("--users-file", help="DOMAIN:USER:PASSWORD lines (pyspnego NTLM_USER_FILE)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--tls-cert", help="PEM server certificate (chain); serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument(
        "--require-cbt", action="store_true", help="Extended Protection: require tls-server-end-point bindings"
    )
    parser.add_argument("--stats-file", help="JSON statistics, rewritten atomically on every change")
    parser.add_argument("--self-test", action="store_true", help="run the built-in checks and exit")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not args.upstream or not args.users_file:
        parser.error("--upstream and --users-file are required (or use --self-test)")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
