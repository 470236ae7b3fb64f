"""DICOM over TLS for the node (PS3.15 B.9, the BCP 195 secure transport connection profile):
both ends show a certificate, and each must be signed by a CA the other trusts.

One certificate and key serve the node as a server (senders connect to it) and as a client (it
connects to ``--send-to``); ``--tls-ca`` names the CA certificates it trusts for both. Peers are
known by their certificate's chain, not by a host name: DICOM peers are configured by address,
often an IP, so the name in a certificate is not checked (as dcmtk does not by default); the
``--allow`` list still decides which AE titles at which addresses may send.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from lungseg.core.errors import LungsegError


@dataclass(frozen=True)
class TlsFiles:
    """The node's certificate and private key (PEM) and the CA certificates it trusts."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_options(cls, cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
        """The three ``--tls-*`` options: all or none."""
        given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        if not any(given.values()):
            return None
        missing = [flag for flag, path in given.items() if path is None]
        if missing:
            raise LungsegError(f"DICOM TLS needs --tls-cert, --tls-key and --tls-ca; missing "
                               f"{', '.join(missing)}")  # fmt: skip
        files = cls(Path(cert), Path(key), Path(ca))  # type: ignore[arg-type]
        files.server_context()  # every problem with the files now, in one line, not per peer
        return files

    def server_context(self) -> ssl.SSLContext:
        """For the Storage SCP: a sender without a certificate the CA signed is refused."""
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        """For sending results: the destination's certificate must be one the CA signed."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # peers by address; the chain is still verified
        return context

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        context.verify_mode = ssl.CERT_REQUIRED
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key),
                           ("--tls-ca", self.ca)):  # fmt: skip
            if not path.is_file():
                raise LungsegError(f"{flag}: no such file", path)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise LungsegError(
                f"--tls-cert/--tls-key: not a PEM certificate and its private key "
                f"({exc.strerror or exc.args[-1]})",
                self.cert,
            ) from None
        try:
            context.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, OSError) as exc:
            raise LungsegError(
                f"--tls-ca: not PEM CA certificates ({exc.strerror or exc.args[-1]})", self.ca
            ) from None
        return context
