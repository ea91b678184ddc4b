#!/usr/bin/env python3
"""Verifies a client assertion (RFC 7523 JWT) with PyJWT, as an independent check of the
assertions exchange-sync signs (src/auth/jwt.rs).

Usage: verify_jwt.py JWT CERT_PEM_PATH AUDIENCE CLIENT_ID

Checks the signature (RS256 or PS256) with the certificate's public key, aud == AUDIENCE,
iss == sub == CLIENT_ID, exp/nbf/iat/jti present and exp not past, a lifetime of at most
10 minutes, and that the header's x5t (SHA-1) or x5t#S256 (SHA-256) names this certificate.
Prints "ok" and exits 0, or prints the reason and exits 1. Exits 2 on a usage or set-up
problem (so a missing PyJWT is never mistaken for a rejected token).
"""

import base64
import sys

try:
    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
except ImportError as err:  # pragma: no cover - set-up problem, not a verdict
    print(f"missing Python package ({err}); run scripts/test.sh, or "
          f"pip install -r tests/peers/requirements.txt")
    sys.exit(2)

MAX_LIFETIME_SECS = 600


def b64url_decode(value: str) -> bytes:
    # MSAL pads x5t, the documentation does not: accept both.
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def verify(token: str, cert_pem: bytes, audience: str, client_id: str) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "JWT":
        raise ValueError(f"header typ is {header.get('typ')!r}, expected 'JWT'")
    thumbprints = {"x5t": hashes.SHA1(), "x5t#S256": hashes.SHA256()}
    named = [name for name in thumbprints if name in header]
    if not named:
        raise ValueError("header names no certificate (neither x5t nor x5t#S256)")
    for name in named:
        if b64url_decode(header[name]) != cert.fingerprint(thumbprints[name]):
            raise ValueError(f"header {name} does not match the certificate")
    claims = jwt.decode(
        token,
        key=cert.public_key(),
        algorithms=["RS256", "PS256"],
        audience=audience,
        issuer=client_id,
        options={"require": ["exp", "nbf", "iat", "iss", "sub", "aud", "jti"]},
    )
    if claims["sub"] != client_id:
        raise ValueError(f"sub is {claims['sub']!r}, expected {client_id!r}")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise ValueError("jti is empty")
    lifetime = claims["exp"] - claims["nbf"]
    if lifetime > MAX_LIFETIME_SECS:
        raise ValueError(f"lifetime {lifetime} s exceeds {MAX_LIFETIME_SECS} s")


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2])
        return 2
    token, cert_path, audience, client_id = sys.argv[1:]
    try:
        with open(cert_path, "rb") as handle:
            cert_pem = handle.read()
    except OSError as err:
        print(f"cannot read {cert_path}: {err}")
        return 2
    try:
        verify(token, cert_pem, audience, client_id)
    except (jwt.PyJWTError, ValueError, KeyError, TypeError) as err:
        print(f"rejected: {type(err).__name__}: {err}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
