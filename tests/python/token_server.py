"""A registry token server, as ECR Public's (public.ecr.aws/token) stands for distribution's
token auth: Basic credentials in, a signed JWT out. Standard library and `cryptography` only.

Usage: python3 token_server.py KEY_PEM CERT_PEM ISSUER SERVICE USER PASSWORD_FILE LOG

Listens on 127.0.0.1 on a free port and prints the port on stdout once it is listening.
`GET /token?service=..&scope=..` with `Authorization: Basic` (what the docker daemon and
BuildKit v0.8 send) answers a token for USER and the password in PASSWORD_FILE; anything else is 401. The token
is ES256-signed by KEY_PEM and carries CERT_PEM in `x5c`, which distribution 2.8 checks
against its `rootcertbundle`; its claims are the ones distribution verifies: `iss`, `aud`
(= the service), `nbf` <= now <= `exp`, and `access` for every scope asked.

An oauth2 `POST /token` is not served: it is answered 404, as registries without that endpoint
answer, on which containerd's resolver (the current engine's pushes and pulls, which try the POST
first) falls back to the GET.

Every request is appended to LOG as one JSON line (method, how it authenticated, whether it was
admitted, the scopes): never the password or the token.
"""

import base64
import datetime
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

LIFETIME = 300


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access(scopes):
    """The `access` claim granting every scope asked: `type:name:action,action` each."""
    out = []
    for param in scopes:
        for scope in param.split(" "):
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep and sep2 and name):
                continue
            out.append({"type": kind, "name": name, "actions": actions.split(",")})
    return out


class Issuer:
    def __init__(self, key_pem, cert_pem, issuer, service):
        with open(key_pem, "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_pem, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.issuer = issuer
        self.service = service

    def token(self, subject, scopes):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + LIFETIME,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access(scopes),
        }
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + b64url(signature), now


def main():
    key_pem, cert_pem, issuer, service, user, password_file, log_path = sys.argv[1:8]
    with open(password_file, "rb") as f:
        password = f.read()
    signer = Issuer(key_pem, cert_pem, issuer, service)
    log_lock = threading.Lock()

    def admits(name, secret):
        return hmac.compare_digest(name.encode(), user.encode()) and hmac.compare_digest(
            secret, password
        )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def record(self, entry):
            with log_lock, open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def answer(self, status, body, extra=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            scopes = query.get("scope", [])
            header = self.headers.get("Authorization", "")
            admitted = False
            if header.startswith("Basic "):
                try:
                    name, _, secret = base64.b64decode(header[6:]).partition(b":")
                    admitted = admits(name.decode(), secret)
                except ValueError:
                    pass
            self.record(
                {
                    "method": "GET",
                    "path": url.path,
                    "service": query.get("service", [""])[0],
                    "auth": "basic" if header.startswith("Basic ") else "none",
                    "admitted": admitted,
                    "scopes": scopes,
                }
            )
            if not admitted:
                self.answer(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    [("WWW-Authenticate", 'Basic realm="token"')],
                )
                return
            token, now = signer.token(user, scopes)
            issued_at = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
            body = {
                "token": token,
                "access_token": token,
                "expires_in": LIFETIME,
                "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self.answer(200, body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.record({"method": "POST", "path": urllib.parse.urlsplit(self.path).path})
            self.answer(404, {"errors": [{"code": "NOT_FOUND", "message": "use GET"}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
