"""DICOM TLS against DCMTK's own TLS tools (Debian's dcmtk, +tls), both ways.

The story (issue 9, item 17): Outpost's TLS was only ever tested against rustls, its own
TLS library, on both ends; a peer with another stack (OpenSSL, as DCMTK and most modalities
and PACS use) had never connected. Here DCMTK's echoscu, storescu and findscu call the TLS
port with certificates from a hospital-style CA (made with the openssl command line, RSA, as
such CAs issue them), and one from another CA is refused at the handshake. A CA-signed
certificate claiming an AE title bound to another certificate (`certificate_names`) gets
A-ASSOCIATE-RJ, calling AE title not recognized, and the refusal names the certificate's
subject. The other way, Outpost calls DCMTK's storescp +tls as a C-MOVE destination with
the remote's `ca_bundle` and `client_certificate`; with the wrong CA the move fails with a
failure status and nothing is delivered.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from harness import EXPLICIT_LE, DcmtkServer, dcmtk, free_port, reachable, unit_user


def _openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


class Pki:
    """A CA and the certificates it issued, in one directory, as PEM files."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.name = name
        self.ca_key = root / f"{name}-ca.key"
        self.ca = root / f"{name}-ca.crt"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", self.ca_key, "-out", self.ca, "-subj", f"/O=Outpost test/CN={name} CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=root)

    def leaf(self, name: str, cn: str, sans: list[str]) -> tuple[Path, Path]:
        """A certificate for both TLS sides (serverAuth and clientAuth): (key, certificate)."""
        key = self.root / f"{name}.key"
        csr = self.root / f"{name}.csr"
        crt = self.root / f"{name}.crt"
        ext = self.root / f"{name}.ext"
        ext.write_text(
            f"subjectAltName={','.join(sans)}\n"
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                 "-subj", f"/O=Outpost test/CN={cn}", cwd=self.root)
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                 "-CAcreateserial", "-days", "2", "-out", crt, "-extfile", ext, cwd=self.root)
        return key, crt


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.pki = Pki(root, "hospital")
        self.rogue = Pki(root, "rogue")
        self.server = self.pki.leaf("outpost-server", "outpost.test",
                                    ["DNS:localhost", "IP:127.0.0.1"])
        self.outpost_client = self.pki.leaf("outpost-client", "OUTPOST", ["DNS:outpost.test"])
        self.ct1 = self.pki.leaf("ct1", "CT1", ["DNS:ct1.test"])
        self.storescp = self.pki.leaf("storescp", "storescp.test",
                                      ["DNS:localhost", "IP:127.0.0.1"])
        self.untrusted = self.rogue.leaf("untrusted", "CT1", ["DNS:ct1.test"])
        if unit_user() is not None:
            reachable(root)

    def tls_args(self, leaf: tuple[Path, Path]) -> list:
        key, crt = leaf
        return ["+tls", key, crt, "-pw", "+cf", self.pki.ca]


@pytest.fixture(scope="module")
def env(module_outposts, small_corpus, tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("pki"))
    e.tls_port = free_port()
    e.storescp_port = free_port()
    e.badca_port = free_port()
    tls = lambda **kw: {"host": "127.0.0.1", "tls": True, **kw}  # noqa: E731
    e.outpost = module_outposts(
        "dcmtk-tls",
        dicom={"accept_unknown_callers": False,
               "tls": {"port": e.tls_port, "certificate": e.server[1],
                       "private_key": e.server[0], "client_ca": e.pki.ca}},
        remotes=[
            tls(ae_title="ECHOSCU", port=free_port()),
            # Bound to the CT1 certificate by its DNS name.
            tls(ae_title="STORESCU", port=free_port(), certificate_names=["ct1.test"]),
            tls(ae_title="FINDSCU", port=free_port()),
            # The central PACS: only its own certificate may claim it.
            tls(ae_title="PACS", port=free_port(), upstream=True,
                certificate_names=["pacs.test"]),
            {"ae_title": "MOVESCU", "host": "127.0.0.1", "port": free_port()},
            tls(ae_title="STORESCP", port=e.storescp_port, ca_bundle=e.pki.ca,
                client_certificate=e.outpost_client[1], client_key=e.outpost_client[0]),
            # Verified against the wrong CA.
            tls(ae_title="BADCA", port=e.badca_port, ca_bundle=e.rogue.ca,
                client_certificate=e.outpost_client[1], client_key=e.outpost_client[0]),
        ])
    e.files = [f for f in small_corpus.files if f["TransferSyntaxUID"] == EXPLICIT_LE][:3]
    assert e.files, "the small corpus has Explicit VR Little Endian files"
    e.study = e.files[0]["StudyInstanceUID"]
    e.study_files = [f for f in e.files if f["StudyInstanceUID"] == e.study]
    e.corpus = small_corpus
    # Stored here, so each test below has them whichever runs alone; the first test checks
    # what storescu saw.
    r = dcmtk("storescu", "-v", *e.tls_args(e.ct1), "-aet", "STORESCU", "-aec", "OUTPOST",
              "-xe", "127.0.0.1", e.tls_port, *small_corpus.paths(e.files), check=False)
    e.store_run = (r.returncode, r.stdout + r.stderr)
    return e


def test_echo_store_and_find_over_tls_with_a_good_certificate(env):
    r = dcmtk("echoscu", "-v", *env.tls_args(env.ct1), "-aet", "ECHOSCU", "-aec", "OUTPOST",
              "127.0.0.1", env.tls_port)
    assert "Received Echo Response (Success)" in r.stdout + r.stderr
    rc, out = env.store_run
    assert rc == 0, out[-3000:]
    assert out.count("Received Store Response (Success)") == len(env.files), out[-3000:]
    work = env.root / "find"
    work.mkdir()
    dcmtk("findscu", "-v", *env.tls_args(env.ct1), "-aet", "FINDSCU", "-aec", "OUTPOST", "-S",
          "-X", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1",
          env.tls_port, cwd=work)
    found = {pydicom.dcmread(p).StudyInstanceUID for p in work.glob("rsp*.dcm")}
    assert found == {f["StudyInstanceUID"] for f in env.files}


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(env):
    mark = env.outpost.log_mark()
    r = dcmtk("echoscu", "-v", *env.tls_args(env.untrusted), "-aet", "ECHOSCU",
              "-aec", "OUTPOST", "127.0.0.1", env.tls_port, check=False)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Received Echo Response" not in r.stdout + r.stderr
    env.outpost.wait_log(r"TLS handshake failed on the TLS port")
    assert "association accepted" not in env.outpost.log_since(mark)


def test_a_ca_signed_certificate_cannot_claim_a_bound_ae(env):
    # CT1's certificate (ct1.test) is trusted, but PACS is bound to pacs.test.
    r = dcmtk("echoscu", "-v", *env.tls_args(env.ct1), "-aet", "PACS", "-aec", "OUTPOST",
              "127.0.0.1", env.tls_port, check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "Association Rejected" in out, out
    assert "Rejected Permanent" in out and "Calling AE Title Not Recognized" in out, out
    line = env.outpost.wait_log(r"association rejected: AE title PACS is bound")
    assert "CN=CT1" in line and "pacs.test" in line, line
    audit = [json.loads(x) for x in env.outpost.audit_path.read_text().splitlines()]
    assert any("PACS" in json.dumps(a) and "CN=CT1" in json.dumps(a) for a in audit), audit[-3:]
    # The bound AE with its own certificate is served; another trusted one cannot be it.
    dcmtk("echoscu", *env.tls_args(env.ct1), "-aet", "STORESCU", "-aec", "OUTPOST",
          "127.0.0.1", env.tls_port)
    key, crt = env.outpost_client
    r = dcmtk("echoscu", *env.tls_args((key, crt)), "-aet", "STORESCU", "-aec", "OUTPOST",
              "127.0.0.1", env.tls_port, check=False)
    assert "Calling AE Title Not Recognized" in r.stdout + r.stderr, r.stdout + r.stderr
    # A bound (so TLS-only) AE on the plain port is refused too.
    r = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "OUTPOST", "127.0.0.1",
              env.outpost.port, check=False)
    assert "Association Rejected" in r.stdout + r.stderr, r.stdout + r.stderr


def _movescu(env, destination: str) -> str:
    r = dcmtk("movescu", "-v", "-aet", "MOVESCU", "-aec", "OUTPOST", "-aem", destination, "-S",
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={env.study}",
              "127.0.0.1", env.outpost.port, check=False)
    return r.stdout + r.stderr


def test_move_to_dcmtk_storescp_over_tls(env):
    out_dir = env.root / "moved"
    out_dir.mkdir()
    # storescp requires and verifies the client certificate (-rc is its default).
    key, crt = env.storescp
    scp = DcmtkServer("storescp", ["-aet", "STORESCP", "+tls", key, crt, "-pw",
                                   "+cf", env.pki.ca, "-od", out_dir, env.storescp_port],
                      env.storescp_port, env.root / "storescp.log")
    try:
        tool = _movescu(env, "STORESCP")
    finally:
        scp.stop()
    assert "Received Final Move Response (Success)" in tool, tool[-3000:]
    got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out_dir.iterdir()}
    assert got == {f["SOPInstanceUID"] for f in env.study_files}


def test_move_to_a_destination_of_another_ca_fails_with_a_clear_status(env):
    out_dir = env.root / "badca"
    out_dir.mkdir()
    key, crt = env.storescp
    scp = DcmtkServer("storescp", ["-aet", "BADCA", "+tls", key, crt, "-pw",
                                   "+cf", env.pki.ca, "-od", out_dir, env.badca_port],
                      env.badca_port, env.root / "badca.log")
    mark = env.outpost.log_mark()
    try:
        tool = _movescu(env, "BADCA")
    finally:
        scp.stop()
    assert "Received Final Move Response (Success)" not in tool, tool[-3000:]
    # 0xA702, Refused: Out of Resources (sub-operations), its Error Comment naming the cause.
    assert re.search(r"(?i)Final Move Response \(Refused: OutOfResourcesSubOperations\)", tool), \
        tool[-3000:]
    assert not list(out_dir.iterdir())
    server = env.outpost.log_since(mark)
    assert re.search(r"(?i)certificate|UnknownIssuer", server), server[-3000:]
