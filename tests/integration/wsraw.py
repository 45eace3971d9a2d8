"""wsraw: a raw-socket RFC 6455 client for the wsgate integration tests.

Unlike a real client library it lets a test send anything: unmasked frames,
RSV bits, reserved opcodes, non-minimal length encodings, fragments in any
order, bytes in chunks with pauses. Reading is explicit: recv_frame() returns
one frame exactly as the server sent it, with a timeout, so a test can assert
what the gateway put on the wire (opcode, RSV1, fragmentation, masking).

Also holds small raw HTTP/1.1 helpers (the HTTP tests need to send malformed
requests that no HTTP library will produce) and permessage-deflate helpers.
"""

import base64
import hashlib
import os
import socket
import ssl as _ssl
import struct
import time
import zlib

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class Timeout(Exception):
    """Nothing (or not enough) arrived within the timeout."""


class Closed(Exception):
    """The peer closed (or reset) the TCP connection."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


# ---------------------------------------------------------------- framing

def build_frame(opcode, payload=b"", fin=True, rsv1=False, rsv2=False, rsv3=False,
                mask=True, mask_key=None, length_form=None):
    """Encodes one frame. length_form forces the length encoding: 7, 16 or 64
    (None = minimal, as RFC 6455 requires). mask=False sends it unmasked."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | \
         (0x10 if rsv3 else 0) | (opcode & 0x0F)
    n = len(payload)
    if length_form is None:
        length_form = 7 if n <= 125 else (16 if n <= 0xFFFF else 64)
    mbit = 0x80 if mask else 0
    if length_form == 7:
        assert n <= 125
        head = struct.pack("!BB", b0, mbit | n)
    elif length_form == 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    if mask_key is None:
        mask_key = os.urandom(4)
    return head + mask_key + mask_bytes(payload, mask_key)


def mask_bytes(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv1", "rsv2", "rsv3", "opcode", "masked", "payload")

    def __init__(self, fin, rsv1, rsv2, rsv3, opcode, masked, payload):
        self.fin, self.rsv1, self.rsv2, self.rsv3 = fin, rsv1, rsv2, rsv3
        self.opcode, self.masked, self.payload = opcode, masked, payload

    @property
    def close_code(self):
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self):
        return self.payload[2:].decode("utf-8", "replace")

    def __repr__(self):
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return (f"Frame(op={self.opcode:#x} fin={int(self.fin)} rsv={int(self.rsv1)}{int(self.rsv2)}"
                f"{int(self.rsv3)} masked={int(self.masked)} len={len(self.payload)} {p!r})")


# ---------------------------------------------------------------- deflate

def deflate_message(data: bytes, compressor=None) -> bytes:
    """permessage-deflate compress one message (RFC 7692 7.2.1): sync flush and
    drop the trailing 00 00 ff ff. Pass a persistent compressobj for context
    takeover; None compresses with a fresh context."""
    c = compressor or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate_message(data: bytes, decompressor=None) -> bytes:
    d = decompressor or zlib.decompressobj(-15)
    return d.decompress(data + b"\x00\x00\xff\xff")


def parse_extension_header(value: str):
    """'permessage-deflate; a=1; b' -> ('permessage-deflate', {'a': '1', 'b': None})."""
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        if not p:
            continue
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip()] = v.strip().strip('"')
        else:
            params[p] = None
    return parts[0], params


# ---------------------------------------------------------------- HTTP

class HTTPResponse:
    def __init__(self, status, reason, version, headers, body):
        self.status, self.reason, self.version = status, reason, version
        self.headers = headers  # list of (name, value), names as sent
        self.body = body

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self):
        return f"HTTPResponse({self.status} {self.reason!r} {self.headers!r} {self.body[:200]!r})"


class Closure:
    """What Conn.wait_closed saw: truth value = the peer closed in time;
    .data = the bytes received (and not read before) up to then."""

    def __init__(self, closed, data):
        self.closed = closed
        self.data = data

    def __bool__(self):
        return self.closed

    def __repr__(self):
        return f"Closure(closed={self.closed}, data={self.data[:200]!r}{'...' if len(self.data) > 200 else ''})"


class Conn:
    """A TCP (optionally TLS) connection with a read buffer."""

    def __init__(self, host, port, timeout=5.0, tls_ctx=None, server_hostname="localhost"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is not None:
            self.sock = tls_ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = bytearray()
        self.eof = False

    def send(self, data: bytes, chunk=None, delay=0.0):
        if chunk is None:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i:i + chunk])
            if delay:
                time.sleep(delay)

    def _fill(self, deadline):
        if self.eof:
            raise Closed("connection closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout("timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise Timeout("timed out")
        except (ConnectionResetError, BrokenPipeError, _ssl.SSLError, OSError) as e:
            self.eof = True
            raise Closed(f"connection error: {e!r}")
        if not data:
            self.eof = True
            raise Closed("connection closed by peer")
        self.buf += data

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, marker: bytes, deadline, limit=1 << 20):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("marker not found within limit")
            self._fill(deadline)

    def wait_closed(self, timeout=5.0):
        """Reads until the peer closes TCP or the timeout passes. Returns a
        Closure: true when the peer closed, with .data holding every byte
        that was unread or arrived before the close (so a test can assert
        nothing, e.g. a second response, came first)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            closed = True
        except Timeout:
            closed = False
        data = bytes(self.buf)
        self.buf.clear()
        return Closure(closed, data)

    def read_response(self, timeout=5.0, head_only=False):
        """Reads one HTTP/1.1 response (Content-Length or chunked bodies; no
        body for HEAD when head_only, nor for 1xx/204/304)."""
        deadline = time.monotonic() + timeout
        head = self.read_until(b"\r\n\r\n", deadline)
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, *rest = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
        resp = HTTPResponse(int(status), rest[0] if rest else "", version, headers, b"")
        st = resp.status
        if head_only or 100 <= st < 200 or st in (204, 304):
            return resp
        te = (resp.header("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                line = self.read_until(b"\r\n", deadline)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    self.read_until(b"\r\n", deadline)
                    break
                body += self.read_exact(size, deadline)
                self.read_exact(2, deadline)
            resp.body = bytes(body)
        elif resp.header("Content-Length") is not None:
            resp.body = self.read_exact(int(resp.header("Content-Length")), deadline)
        else:
            # Body delimited by close.
            body = bytearray(self.buf)
            self.buf.clear()
            try:
                while True:
                    self._fill(deadline)
                    body += self.buf
                    self.buf.clear()
            except Closed:
                pass
            resp.body = bytes(body)
        return resp

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """Closes with RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()


def http_request(port, method="GET", path="/", headers=None, body=b"", host="127.0.0.1",
                 timeout=5.0, tls_ctx=None):
    """One request on a fresh connection with Connection: close."""
    c = Conn(host, port, timeout=timeout, tls_ctx=tls_ctx)
    try:
        hdrs = {"Host": f"{host}:{port}", "Connection": "close"}
        hdrs.update(headers or {})
        if body:
            hdrs["Content-Length"] = str(len(body))
        req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        c.send(req.encode("latin-1") + body)
        return c.read_response(timeout=timeout, head_only=(method == "HEAD"))
    finally:
        c.close()


# ---------------------------------------------------------------- WebSocket

class HandshakeError(Exception):
    def __init__(self, response):
        super().__init__(f"handshake refused: {response!r}")
        self.response = response


class WS:
    """A raw WebSocket client connection. connect() performs the handshake;
    with expect_101=False a refused handshake's response is kept in
    .response instead of raising."""

    def __init__(self, port, path="/probe/ws", host="127.0.0.1", headers=None, protocols=None,
                 extensions=None, timeout=5.0, tls_ctx=None, key=None, version="13",
                 expect_101=True, extra_raw=b""):
        self.conn = Conn(host, port, timeout=timeout, tls_ctx=tls_ctx)
        self.key = key if key is not None else new_key()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade"]
        if self.key is not False:
            lines.append(f"Sec-WebSocket-Key: {self.key}")
        if version is not None:
            lines.append(f"Sec-WebSocket-Version: {version}")
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        if extensions:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        for k, v in (headers or {}).items() if isinstance(headers, dict) else (headers or []):
            lines.append(f"{k}: {v}")
        req = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.conn.send(req + extra_raw)
        self.response = self.conn.read_response(timeout=timeout, head_only=True)
        self.deflate = False
        self.deflate_params = {}
        if self.response.status != 101:
            # Read the error body so tests can check the envelope.
            cl = self.response.header("Content-Length")
            if cl:
                self.response.body = self.conn.read_exact(int(cl), time.monotonic() + timeout)
            if expect_101:
                self.conn.close()
                raise HandshakeError(self.response)
            return
        assert self.response.header("Sec-WebSocket-Accept") == accept_key(self.key), self.response
        ext = self.response.header("Sec-WebSocket-Extensions")
        if ext:
            name, params = parse_extension_header(ext)
            if name == "permessage-deflate":
                self.deflate = True
                self.deflate_params = params

    @property
    def subprotocol(self):
        return self.response.header("Sec-WebSocket-Protocol")

    # -- sending
    def send_frame(self, opcode, payload=b"", chunk=None, delay=0.0, **kw):
        self.conn.send(build_frame(opcode, payload, **kw), chunk=chunk, delay=delay)

    def send_raw(self, data, chunk=None, delay=0.0):
        self.conn.send(data, chunk=chunk, delay=delay)

    def send_text(self, text, **kw):
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text, **kw)

    def send_binary(self, data, **kw):
        self.send_frame(OP_BINARY, data, **kw)

    def send_close(self, code=None, reason=b"", **kw):
        self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    # -- receiving
    def recv_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        c = self.conn
        h = c.read_exact(2, deadline)
        b0, b1 = h[0], h[1]
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", c.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", c.read_exact(8, deadline))[0]
        masked = bool(b1 & 0x80)
        key = c.read_exact(4, deadline) if masked else None
        payload = c.read_exact(n, deadline)
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(bool(b0 & 0x80), bool(b0 & 0x40), bool(b0 & 0x20), bool(b0 & 0x10),
                     b0 & 0x0F, masked, payload)

    def recv_message(self, timeout=5.0, answer_pings=True, inflate=None):
        """Reads one data message (reassembling fragments). Pings are answered
        (when answer_pings) and skipped; pongs skipped. Returns (opcode,
        payload, frames). A Close frame raises AssertionError with it.
        When the message has RSV1 set it is inflated (inflate: a persistent
        decompressobj for context takeover, else a fresh one)."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            if f.opcode == OP_CLOSE:
                raise AssertionError(f"expected a message, got close {f.close_code} {f.close_reason!r}")
            frames.append(f)
            if f.fin:
                break
        payload = b"".join(x.payload for x in frames)
        if frames[0].rsv1:
            payload = inflate_message(payload, inflate)
        return frames[0].opcode, payload, frames

    def expect_close(self, timeout=5.0):
        """Reads frames until a Close frame; returns it. Data frames before it
        are skipped. Raises Closed if TCP ends without a Close frame."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                return f

    def wait_closed(self, timeout=5.0):
        return self.conn.wait_closed(timeout)

    def close(self):
        self.conn.close()

    def reset(self):
        self.conn.reset()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
