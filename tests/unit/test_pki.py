"""fieldnode.pki: the certificates chain and say what they are for; keys land on disk 0600, atomically."""
import hashlib
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from fieldnode import pki
from fieldnode.errors import UsageError


@pytest.fixture(scope="module")
def ca():
    return pki.make_ca()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def cn(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def eku(cert):
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# -- certificates ----------------------------------------------------------------------------------------

def test_ca_is_a_p256_ca_that_signs_certificates_and_crls(ca):
    key, cert = ca
    assert isinstance(key.curve, ec.SECP256R1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(cert)
    assert cn(cert) == "fieldnode fleet CA"


def test_server_cert_chains_to_the_ca_for_its_names(ca):
    key, cert = pki.issue_server_cert(*ca, hostnames=("localhost", "broker.lan"), ips=("127.0.0.1",))
    verifier = lambda name: PolicyBuilder().store(Store([ca[1]])).build_server_verifier(name)
    for name in (x509.DNSName("localhost"), x509.DNSName("broker.lan")):
        chain = verifier(name).verify(cert, [])
        assert chain[-1] == ca[1]
    with pytest.raises(Exception):
        verifier(x509.DNSName("evil.example")).verify(cert, [])
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_cert_carries_the_node_id_and_client_auth_only(ca):
    key, cert = pki.issue_client_cert(*ca, "node-7")
    assert cn(cert) == "node-7"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    # (cryptography's client verifier insists on a SAN, which mosquitto does not need: the broker's
    # OpenSSL and the node's mbedTLS check the chain for real in tests/hil.)
    cert.verify_directly_issued_by(ca[1])
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_host_cert_and_random_serials(ca):
    certs = [pki.make_host_cert()[1] for _ in range(3)]
    assert {cn(c) for c in certs} == {"fieldnode-host"}
    assert all(pki.is_self_signed(c) for c in certs)
    certs[0].verify_directly_issued_by(certs[0])
    assert len({c.serial_number for c in certs}) == 3
    assert all(0 < c.serial_number < 2 ** 159 for c in certs)


@pytest.mark.parametrize("name", ["fieldnode-host", "fieldnode-ingest", "fieldnode-x"])
def test_the_host_tools_names_are_no_node_ids(ca, name):
    """The broker makes a node certificate's CN its client id: the CA never signs a host tool's name."""
    with pytest.raises(UsageError, match="host tools"):
        pki.issue_client_cert(*ca, name)
    assert pki.check_host_name(name) == name
    with pytest.raises(UsageError):
        pki.check_host_name("node-1")


def test_client_cert_from_another_ca_does_not_chain(ca):
    other = pki.make_ca("other")
    _, cert = pki.issue_client_cert(*other, "node-1")
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(ca[1])


@pytest.mark.parametrize("bad", ["", "node/1", "node+1", "#", "node 1", "a\nb", "é", "x" * 33])
def test_node_id_that_could_break_acls_is_refused(ca, bad):
    with pytest.raises(UsageError):
        pki.issue_client_cert(*ca, bad)


def test_lifetimes(ca):
    _, cert = pki.issue_client_cert(*ca, "node-1", days=30)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30   # + the 5-minute backdate
    with pytest.raises(UsageError):
        pki.issue_client_cert(*ca, "node-1", days=0)


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca(ca):
    _, c1 = pki.issue_client_cert(*ca, "node-1")
    _, c2 = pki.issue_client_cert(*ca, "node-2")
    crl = pki.make_crl(*ca, [c1.serial_number], number=7)
    assert crl.is_signature_valid(ca[1].public_key())
    assert crl.get_revoked_certificate_by_serial_number(c1.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(c2.serial_number) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.issuer == ca[1].subject
    assert len(pki.make_crl(*ca, [])) == 0


def test_fingerprint_is_sha256_of_der(ca):
    cert = ca[1]
    assert pki.fingerprint(cert) == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- files -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
@pytest.mark.parametrize("fmt", ["pem", "der"])
def test_key_is_0600_whatever_the_umask(ca, tmp_path, umask, fmt):
    old = os.umask(umask)
    try:
        path = pki.write_key(tmp_path / "k", ca[0], fmt=fmt)
        cert_path = pki.write_cert(tmp_path / "c", ca[1], fmt=fmt)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(cert_path) == 0o644
    assert pki.load_key(path).private_numbers() == ca[0].private_numbers()
    assert pki.load_cert(cert_path) == ca[1]


def test_overwriting_a_world_readable_file_leaves_a_0600_key(ca, tmp_path):
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    pki.write_key(path, ca[0])
    assert mode(path) == 0o600


def test_encrypted_key_needs_its_passphrase(ca, tmp_path):
    path = pki.write_key(tmp_path / "k.pem", ca[0], passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert mode(path) == 0o600
    with pytest.raises(TypeError):
        pki.load_key(path)
    with pytest.raises(ValueError):
        pki.load_key(path, b"wrong")
    assert pki.load_key(path, b"correct horse").private_numbers() == ca[0].private_numbers()


def test_atomic_write_leaves_no_temporary_file(ca, tmp_path):
    pki.write_key(tmp_path / "k.pem", ca[0])
    pki.write_cert(tmp_path / "c.pem", ca[1])
    pki.write_crl(tmp_path / "crl.pem", pki.make_crl(*ca, []))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "crl.pem", "k.pem"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(ca, tmp_path, monkeypatch):
    path = tmp_path / "k.pem"
    path.write_bytes(b"previous")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        pki.write_key(path, ca[0])
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_loaders_read_pem_and_der(ca, tmp_path):
    crl = pki.make_crl(*ca, [5])
    for fmt in ("pem", "der"):
        assert pki.load_crl(pki.write_crl(tmp_path / ("crl." + fmt), crl, fmt)) == crl
    with pytest.raises(UsageError):
        pki.write_cert(tmp_path / "x", ca[1], fmt="txt")


def test_node_tls_files_are_der_with_a_private_unencrypted_pkcs8_key(ca, tmp_path):
    key, cert = pki.issue_client_cert(*ca, "node-1")
    files = pki.write_node_tls(tmp_path / "node-1", ca[1], key, cert)
    assert [p.name for p in files] == ["ca.der", "node.der", "node.key.der"]
    assert mode(tmp_path / "node-1") == 0o700
    assert mode(files.key) == 0o600
    assert x509.load_der_x509_certificate(files.ca.read_bytes()) == ca[1]
    assert x509.load_der_x509_certificate(files.cert.read_bytes()) == cert
    der = files.key.read_bytes()
    assert der == key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    assert serialization.load_der_private_key(der, None).private_numbers() == key.private_numbers()
