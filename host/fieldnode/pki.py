"""The fleet PKI: CA, broker and client certificates, the CRL, and writing them to disk safely.

Every key is ECDSA P-256 and every signature ECDSA-SHA256: small enough for a node's mbedTLS, and one key
type for the whole fleet. A client certificate's CN is the node id (or `fieldnode-host` for the host
tools); the broker uses that CN as the MQTT username, so the CN is what the ACL grants topics to.

Writers are atomic (a temporary file in the same directory, then a rename), so a crash never leaves a
half-written key; private keys are created mode 0600 and stay 0600. Nothing here prints or logs key material.

The node side: `write_node_tls` writes the three DER files the firmware loads with MicroPython's `ssl`
(mbedTLS), which takes DER bytes, not PEM text, in `load_cert_chain` and `cadata`.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import UsageError

HOST_PREFIX = "fieldnode-"  # the host tools' names (CN, MQTT client ids); no node id starts with it
HOST_CN = HOST_PREFIX + "host"
CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 825
CRL_DAYS = 30

# docs/protocol.md: a node id is 1-32 of A-Z a-z 0-9 _ -. It becomes the MQTT username that mosquitto
# substitutes into ACL patterns, so '/', '+', '#' and spaces must never get into a CN.
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
# Certificates start a little in the past so a clock a few minutes behind the issuer's still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644

PrivateKey = ec.EllipticCurvePrivateKey


class NodeTLSFiles(NamedTuple):
    """Where `write_node_tls` put a node's CA certificate, certificate and private key."""
    ca: Path
    cert: Path
    key: Path


# -- issuing -------------------------------------------------------------------------------------------

def check_node_id(node_id: str) -> str:
    """Return `node_id` if it is a valid node id, else raise UsageError. Names starting with HOST_PREFIX are
    the host tools': the broker makes a node certificate's CN its MQTT client id, so a node named like a
    host tool's client id could take that tool's session over."""
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise UsageError("invalid node id %r: use 1-32 of A-Z a-z 0-9 _ -" % (node_id,))
    if node_id.startswith(HOST_PREFIX):
        raise UsageError("node id %r: names starting with %r are the host tools'; choose another"
                         % (node_id, HOST_PREFIX))
    return node_id


def check_host_name(name: str) -> str:
    """Return `name` if it can name a host tool (a CN or an MQTT client id): HOST_PREFIX, then what a node id
    may hold; else raise UsageError."""
    if not isinstance(name, str) or not name.startswith(HOST_PREFIX) or not _NODE_ID.match(name):
        raise UsageError("host client name %r: %r followed by A-Z a-z 0-9 _ - (32 characters at most)"
                         % (name, HOST_PREFIX))
    return name


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise UsageError("certificate lifetime must be at least one day, got %d" % days)
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - _BACKDATE, now + datetime.timedelta(days=days)


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def _leaf_builder(ca_cert: x509.Certificate | None, common_name: str, key: PrivateKey,
                  days: int, eku: x509.ObjectIdentifier,
                  validity: tuple[datetime.datetime, datetime.datetime] | None = None) -> x509.CertificateBuilder:
    """An end-entity certificate issued by `ca_cert`, or self-signed (ca_cert None: `key` signs it)."""
    not_before, not_after = validity or _validity(days)
    issuer_ski = _ski(ca_cert) if ca_cert is not None else x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject if ca_cert is not None else _name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                           critical=False))


def make_ca(common_name: str = "fieldnode fleet CA", days: int = CA_DAYS) -> tuple[PrivateKey, x509.Certificate]:
    """A new self-signed fleet CA: it signs the broker's and every client's certificate, and the CRL."""
    key = new_key()
    not_before, not_after = _validity(days)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_server_cert(ca_key: PrivateKey, ca_cert: x509.Certificate, hostnames: Iterable[str] = ("localhost",),
                      ips: Iterable[str] = ("127.0.0.1",),
                      days: int = SERVER_DAYS) -> tuple[PrivateKey, x509.Certificate]:
    """The broker's certificate: serverAuth, with the names clients check (`server_hostname`) in the SAN."""
    hostnames, ips = list(hostnames), list(ips)
    san = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if not san:
        raise UsageError("a server certificate needs at least one host name or IP address")
    key = new_key()
    cn = hostnames[0] if hostnames else ips[0]
    cert = (_leaf_builder(ca_cert, cn, key, days, ExtendedKeyUsageOID.SERVER_AUTH)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def issue_client_cert(ca_key: PrivateKey, ca_cert: x509.Certificate, common_name: str,
                      days: int = CLIENT_DAYS, not_before: datetime.datetime | None = None,
                      not_after: datetime.datetime | None = None) -> tuple[PrivateKey, x509.Certificate]:
    """A client certificate (clientAuth) whose CN is a node id, or HOST_CN for the host tools.

    `not_before`/`not_after` (timezone-aware) replace the validity `days` gives, e.g. for a certificate
    that expired yesterday or is not valid yet (tests of what the broker refuses)."""
    check_node_id(common_name)
    validity = None
    if not_before is not None or not_after is not None:
        default_before, default_after = _validity(days)
        validity = (not_before or default_before, not_after or default_after)
        if not validity[0] < validity[1]:
            raise UsageError("not_before must be earlier than not_after")
    key = new_key()
    cert = _leaf_builder(ca_cert, common_name, key, days, ExtendedKeyUsageOID.CLIENT_AUTH,
                         validity).sign(ca_key, hashes.SHA256())
    return key, cert


def make_host_cert(days: int = CLIENT_DAYS) -> tuple[PrivateKey, x509.Certificate]:
    """The host tools' client certificate (CN HOST_CN): self-signed, so that the broker's host listener can
    trust exactly this certificate (pinned: its `cafile` is this file) and no node certificate there."""
    key = new_key()
    return key, _leaf_builder(None, HOST_CN, key, days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(key, hashes.SHA256())


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def make_crl(ca_key: PrivateKey, ca_cert: x509.Certificate, revoked_serials: Iterable[int], days: int = CRL_DAYS,
             number: int | None = None) -> x509.CertificateRevocationList:
    """A CRL revoking `revoked_serials`. `number` (the CRL number) defaults to the current Unix time, so
    successive CRLs from one CA count up."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if number is None:
        number = int(now.timestamp())
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - _BACKDATE)
               .next_update(now + datetime.timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(ca_cert)),
                              critical=False))
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _BACKDATE).build())
    return builder.sign(ca_key, hashes.SHA256())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as lowercase hex (`openssl x509 -fingerprint -sha256`, without colons)."""
    return cert.fingerprint(hashes.SHA256()).hex()


# -- writing and loading -------------------------------------------------------------------------------

def _encoding(fmt: str) -> serialization.Encoding:
    try:
        return {"pem": serialization.Encoding.PEM, "der": serialization.Encoding.DER}[fmt]
    except KeyError:
        raise UsageError("unknown format %r: use 'pem' or 'der'" % fmt) from None


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = _PUBLIC_MODE) -> Path:
    """Write `data` to `path` through a temporary file in the same directory, created 0600 (mkstemp),
    set to `mode` and renamed over `path`; on any error the temporary file is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def key_bytes(key: PrivateKey, fmt: str = "pem", passphrase: bytes | None = None, pkcs8: bool = True) -> bytes:
    """Serialise a private key: PKCS#8 (default) or SEC1 (`pkcs8=False`, unencrypted only)."""
    if passphrase:
        if not pkcs8:
            raise UsageError("an encrypted key must be PKCS#8")
        encryption = serialization.BestAvailableEncryption(passphrase)
    else:
        encryption = serialization.NoEncryption()
    private_format = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(_encoding(fmt), private_format, encryption)


def write_key(path: str | os.PathLike, key: PrivateKey, passphrase: bytes | None = None, fmt: str = "pem",
              pkcs8: bool = True) -> Path:
    """Write a private key atomically, mode 0600 from creation on."""
    return atomic_write(path, key_bytes(key, fmt, passphrase, pkcs8), _KEY_MODE)


def write_cert(path: str | os.PathLike, cert: x509.Certificate, fmt: str = "pem") -> Path:
    return atomic_write(path, cert.public_bytes(_encoding(fmt)))


def write_crl(path: str | os.PathLike, crl: x509.CertificateRevocationList, fmt: str = "pem") -> Path:
    return atomic_write(path, crl.public_bytes(_encoding(fmt)))


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def load_key(path: str | os.PathLike, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM or DER private key (PKCS#8 or SEC1)."""
    data = Path(path).read_bytes()
    loader = serialization.load_pem_private_key if _is_pem(data) else serialization.load_der_private_key
    key = loader(data, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError("%s: not an EC private key" % path)
    return key


def load_cert(path: str | os.PathLike) -> x509.Certificate:
    data = Path(path).read_bytes()
    return x509.load_pem_x509_certificate(data) if _is_pem(data) else x509.load_der_x509_certificate(data)


def load_crl(path: str | os.PathLike) -> x509.CertificateRevocationList:
    data = Path(path).read_bytes()
    return x509.load_pem_x509_crl(data) if _is_pem(data) else x509.load_der_x509_crl(data)


def write_node_tls(directory: str | os.PathLike, ca_cert: x509.Certificate, key: PrivateKey,
                   cert: x509.Certificate) -> NodeTLSFiles:
    """Write a node's TLS material as MicroPython's ssl loads it: ca.der, node.der and node.key.der
    (unencrypted PKCS#8 DER, mode 0600). mbedTLS 3.6 also accepts SEC1 DER; PKCS#8 is the one format
    both it and every other tool read."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return NodeTLSFiles(ca=write_cert(directory / "ca.der", ca_cert, "der"),
                        cert=write_cert(directory / "node.der", cert, "der"),
                        key=write_key(directory / "node.key.der", key, fmt="der"))
