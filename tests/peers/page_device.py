#!/usr/bin/env python3
"""A cradle-protocol(7) device written from the man page alone, in another language.

It shares no code with cradle's simulator: it is the firmware a team would write from the
page, used as the independent peer for `cradle conformance` and `cradle provision`.
Serves one pseudo-terminal (path printed on stdout) until killed. maxline 512, window 4
(not the simulator's values), state in memory.

Needs the `cryptography` package (P-256 keys, CSRs, ECDSA).
"""
import base64
import hashlib
import os
import re
import select
import sys
import termios
import tty
import zlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MAXLINE, WINDOW, HWID = 512, 4, "PAGE-DEV-1"
CHUNK = (MAXLINE - 64) // 4 * 3
ARITY = {"HELLO": 1, "KEYGEN": 0, "CSR": 0, "STAT": 1, "WRITE": 3, "COMMIT": 3,
         "READ": 3, "ERASE": 1, "LOCK": 0, "WIPE": 1}
NAMES = {1: "bad-frame", 2: "unknown-command", 3: "bad-argument", 4: "line-too-long",
         5: "offset-gap", 6: "data-conflict", 7: "hash-mismatch", 8: "no-key", 9: "locked",
         10: "not-committed", 11: "unknown-slot", 12: "bad-key", 13: "lock-refused",
         14: "read-forbidden", 15: "internal", 16: "unsupported-version"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SEQ = re.compile(r"^[1-9][0-9]{0,8}$")


class Err(Exception):
    def __init__(self, code):
        self.code = code


def frame(verb, seq, args):
    body = " ".join([verb, str(seq)] + args)
    return ("$%s *%08x\n" % (body, zlib.crc32(body.encode()))).encode()


def err(seq, code):
    return frame("ERR", seq, [str(code), NAMES[code]])


class Device:
    def __init__(self):
        self.key = None  # ec private key
        self.slots = {s: [b"", False] for s in ("key", "cert", "chain")}
        self.locked = False
        self.wipes = 0
        self.stored = None  # the last WIPE reply's args

    def spki(self):
        return self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def make_csr(self):
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HWID)]))
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def line(self, raw):
        """One received line (LF stripped): the reply bytes, or b'' for none."""
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return b""  # blank lines are ignored
        text = raw[raw.rfind(b"$") + 1:] if b"$" in raw else None
        m = text and re.fullmatch(rb"([A-Z]+) ([^ ]+)((?: [!-~]+)*) \*([0-9a-f]{8})", text)
        if not m or b"$" in text or zlib.crc32(text[:-10]) != int(m.group(4), 16) \
                or not SEQ.match(m.group(2).decode()):
            return err(0, 1)
        verb, seq = m.group(1).decode(), int(m.group(2))
        args = m.group(3).decode().split()
        try:
            if verb not in ARITY:
                raise Err(2)
            if len(args) != ARITY[verb]:
                raise Err(3)
            return frame("OK", seq, getattr(self, verb.lower())(*args))
        except Err as e:
            return err(seq, e.code)

    def slot(self, name):
        if name not in self.slots:
            raise Err(11)
        return self.slots[name]

    @staticmethod
    def num(s):
        if not re.fullmatch(r"[0-9]{1,10}", s):
            raise Err(3)
        return int(s)

    def hello(self, v):
        if not re.fullmatch(r"[0-9]+", v):
            raise Err(3)
        if v != "1":
            raise Err(16)
        state = "locked" if self.locked else ("keyed" if self.key else "empty")
        out = ["proto=1", "hwid=" + HWID, "model=page-dev", "fw=0.1", "state=" + state,
               "maxline=%d" % MAXLINE, "window=%d" % WINDOW]
        if self.key:
            out.append("pub=" + base64.b64encode(self.spki()).decode())
        return out

    def keygen(self):
        if self.locked:
            raise Err(9)
        self.key = ec.generate_private_key(ec.SECP256R1())
        for s in self.slots.values():
            s[:] = [b"", False]
        return ["pub=" + base64.b64encode(self.spki()).decode(),
                "csr=" + base64.b64encode(self.make_csr()).decode()]

    def csr(self):
        if not self.key:
            raise Err(8)
        return ["csr=" + base64.b64encode(self.make_csr()).decode()]

    def stat(self, name):
        data, committed = self.slot(name)
        return ["len=%d" % len(data), "committed=%d" % committed,
                "sha256=" + hashlib.sha256(data).hexdigest()]

    def write(self, name, off, b64):
        s = self.slot(name)
        off = self.num(off)
        try:
            data = base64.b64decode(b64, validate=True)
        except ValueError:
            raise Err(3)
        if self.locked:
            raise Err(9)
        if len(data) > CHUNK:
            raise Err(3)
        held = s[0]
        if off > len(held):
            raise Err(5)
        overlap = held[off:off + len(data)]
        if overlap != data[:len(overlap)]:
            raise Err(6)
        if off + len(data) > len(held):
            s[0] = held[:off] + data
            s[1] = False
            if name == "key":
                self.key = None
        return ["len=%d" % len(s[0])]

    def commit(self, name, n, sha):
        s = self.slot(name)
        n = self.num(n)
        if not HEX64.match(sha):
            raise Err(3)
        got = hashlib.sha256(s[0]).hexdigest()
        if self.locked and not (s[1] and len(s[0]) == n and got == sha):
            raise Err(9)
        if len(s[0]) != n:
            raise Err(10)
        if got != sha:
            raise Err(7)
        if not s[1]:
            if name == "key":
                try:
                    k = serialization.load_der_private_key(s[0], None)
                    assert isinstance(k, ec.EllipticCurvePrivateKey)
                    assert isinstance(k.curve, ec.SECP256R1)
                except Exception:
                    s[:] = [b"", False]
                    raise Err(12)
                self.key = k
                for o in ("cert", "chain"):
                    self.slots[o][:] = [b"", False]
            s[1] = True
        return ["sha256=" + got]

    def read(self, name, off, n):
        s = self.slot(name)
        off, n = self.num(off), self.num(n)
        if name == "key":
            raise Err(14)
        if n > CHUNK or off + n > len(s[0]):
            raise Err(3)
        return ["data=" + base64.b64encode(s[0][off:off + n]).decode()]

    def erase(self, name):
        s = self.slot(name)
        if self.locked:
            raise Err(9)
        s[:] = [b"", False]
        if name == "key":
            self.key = None
        return []

    def lock(self):
        if self.locked:
            return ["state=locked"]
        if not self.key:
            raise Err(8)
        cert, committed = self.slots["cert"]
        if not committed:
            raise Err(10)
        try:
            pub = x509.load_der_x509_certificate(cert).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except Exception:
            raise Err(12)
        if pub != self.spki():
            raise Err(12)
        self.locked = True
        return ["state=locked"]

    def wipe(self, nonce):
        if not HEX64.match(nonce):
            raise Err(3)
        if not self.key:
            if self.stored:
                return self.stored
            raise Err(8)
        erased = ["key"] + [n for n in ("cert", "chain") if self.slots[n][0]]
        self.wipes += 1
        payload = ("CRADLE-WIPE-ATTESTATION-V1\nhwid=%s\nnonce=%s\nerased=%s\ncounter=%d\n"
                   % (HWID, nonce, ",".join(erased), self.wipes)).encode()
        sig = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        self.key, self.locked = None, False
        for s in self.slots.values():
            s[:] = [b"", False]
        self.stored = ["att=" + base64.b64encode(payload).decode(),
                       "sig=" + base64.b64encode(sig).decode()]
        return self.stored


def main():
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    print(os.ttyname(slave), flush=True)
    dev = Device()
    buf, overflow = b"", False
    while True:
        r, _, _ = select.select([master], [], [], 0.5)
        if not r:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:
            continue
        out = b""
        for b in data:
            c = bytes([b])
            if c == b"\n":
                if not overflow:
                    out += dev.line(buf)
                buf, overflow = b"", False
            elif overflow:
                continue
            elif len(buf) + 1 >= MAXLINE:
                buf, overflow = b"", True
                out += err(0, 4)
            else:
                buf += c
        if out:
            os.write(master, out)



if __name__ == "__main__":
    main()
