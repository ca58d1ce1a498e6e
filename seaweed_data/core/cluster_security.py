"""Security of a :class:`~seaweed_data.core.cluster.LocalCluster`: a generated ``security.toml``
with random JWT keys, and an HTTPS filer whose certificate is signed by a private CA.

``LocalCluster(security=...)`` takes the path of a ready ``security.toml`` (copied to every
component), ``True`` (every JWT key), or a :class:`ClusterSecurity` saying which keys to make
and whether the filer serves HTTPS. The generated files live in ``base_dir``, readable by their
owner only, and go away with it. The cluster object never holds a key, so no repr or log line
can show one: tests that need them read :attr:`LocalCluster.security_toml`. (A given file is
used as it is: an ``[https.filer]`` section in it is not noticed, so ``filer_url`` says http.)

No ``[grpc.*]`` section is written, so gRPC stays cleartext: the client's h2c calls (master
discovery, ``CreateEntry``) keep working next to an HTTPS filer.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ClusterError, ConfigError
from .cluster_layout import HOST
from .security import FILER_READ, FILER_WRITE, SECTIONS, VOLUME_READ, VOLUME_WRITE

CERT_DAYS = 30


@dataclass(frozen=True)
class ClusterSecurity:
    """What ``LocalCluster(security=ClusterSecurity(...))`` turns on; ``True`` means the
    defaults: every JWT key, plain HTTP."""

    volume_jwt: bool = True
    """Volume servers check tokens: ``[jwt.signing]`` (and ``[jwt.signing.read]``)."""
    filer_jwt: bool = True
    """The filer checks tokens: ``[jwt.filer_signing]`` (and ``[jwt.filer_signing.read]``)."""
    read_jwt: bool = True
    """Reads need tokens too (the ``.read`` keys); False guards writes only."""
    https: bool = False
    """The filer serves HTTPS with a certificate of a private CA (:attr:`LocalCluster.ca_file`)."""
    expires_after_seconds: int = 10
    """Lifetime of the tokens the master hands out."""

    def __post_init__(self) -> None:
        if self.expires_after_seconds < 1:
            raise ConfigError("ClusterSecurity.expires_after_seconds must be >= 1")

    def kinds(self) -> list[str]:
        """The kinds of key (:data:`.security.VOLUME_WRITE`...) this asks for."""
        wanted = [VOLUME_WRITE, VOLUME_READ] if self.volume_jwt else []
        wanted += [FILER_WRITE, FILER_READ] if self.filer_jwt else []
        return [kind for kind in wanted if self.read_jwt or kind not in (VOLUME_READ, FILER_READ)]


SecurityOption = str | os.PathLike[str] | bool | ClusterSecurity | None
SecuritySpec = Path | ClusterSecurity | None


def resolve_security(security: SecurityOption, s3: bool) -> SecuritySpec:
    """``security`` as a file path, a :class:`ClusterSecurity` or None."""
    if security is None or security is False:
        return None
    spec = ClusterSecurity() if security is True else security
    if isinstance(spec, ClusterSecurity):
        if spec.https and s3:
            raise ConfigError("an S3 gateway in front of an HTTPS filer is not supported")
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return Path(spec)
    raise ConfigError(f"security must be a path, True or a ClusterSecurity, got {security!r}")


@dataclass(frozen=True)
class SecurityFiles:
    """What a cluster's components and clients are given."""

    toml: Path | None = None
    """The ``security.toml`` of every component; None for an unsecured cluster."""
    ca_file: Path | None = None
    """PEM of the CA that signed the filer's certificate; None when the filer speaks HTTP."""


def write_security(spec: SecuritySpec, base_dir: Path) -> SecurityFiles:
    """The files of ``spec``: a given ``security.toml`` as it is, or one generated in
    ``base_dir`` (with certificates in ``base_dir/tls`` for an HTTPS filer)."""
    if spec is None:
        return SecurityFiles()
    if isinstance(spec, Path):
        if not spec.is_file():
            raise ClusterError(f"security file not found: {spec}")
        return SecurityFiles(spec)
    lines: list[str] = []
    for kind in spec.kinds():
        lines += [f"[{SECTIONS[kind]}]", f'key = "{secrets.token_urlsafe(32)}"',
                  f"expires_after_seconds = {spec.expires_after_seconds}", ""]
    ca_file = None
    if spec.https:
        ca_file, cert, key = write_certificates(base_dir / "tls")
        lines += ["[https.filer]", f"cert = {json.dumps(str(cert))}",
                  f"key = {json.dumps(str(key))}",
                  "disable_tls_verify_client_cert = true", ""]  # else weed wants mTLS
    toml = base_dir / "security.toml"
    write_private(toml, "\n".join(lines).encode())
    return SecurityFiles(toml, ca_file)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner may read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
             issuer_key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), False))


def write_certificates(directory: Path, host: str = HOST) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for ``host`` (and ``localhost``) signed by it:
    the paths of the CA's PEM, the certificate's PEM and its private key's PEM."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = "seaweed_data LocalCluster CA"
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False)
    ca_cert = (_builder(ca_name, ca_name, ca_key, ca_key)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, **usage), True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
    cert = (_builder(host, ca_name, key, ca_key)
            .add_extension(x509.SubjectAlternativeName(names), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, **usage), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "filer.pem", directory / "filer-key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths[2], key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return paths
