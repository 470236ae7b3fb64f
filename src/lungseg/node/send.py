"""Delivery of results to the destination: C-STORE to an AE, or STOW-RS to a DICOMweb server.

A destination's :meth:`send` stores a list of DICOM files or raises :class:`Undelivered`; the
service retries with backoff. A second delivery of the same files is harmless: their UIDs are
the same, and a PACS replaces an instance it already holds.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from lungseg.core.errors import LungsegError
from lungseg.node.tls import TlsFiles


class Undelivered(Exception):
    """The destination did not store the results (down, refusing, timing out); say why."""


@dataclass(frozen=True)
class CStoreDestination:
    """A Storage SCP: ``AE@host:port``."""

    ae_title: str
    host: str
    port: int
    calling_ae: str = "LUNGSEG"
    timeout_s: float = 30.0
    #: Connect by DICOM TLS with these files (:mod:`lungseg.node.tls`).
    tls: TlsFiles | None = None

    @classmethod
    def parse(cls, text: str, calling_ae: str, tls: TlsFiles | None = None) -> CStoreDestination:
        ae, sep, where = text.partition("@")
        host, colon, port = where.rpartition(":")
        if not sep or not colon or not ae or not host or not port.isdigit():
            raise LungsegError(f"--send-to {text!r}: expected AE@host:port")
        return cls(ae, host, int(port), calling_ae, tls=tls)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def send(self, files: Sequence[bytes]) -> None:
        import pydicom
        from pynetdicom import AE

        datasets = [pydicom.dcmread(io.BytesIO(f)) for f in files]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for cls_ in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(cls_, [str(ds.file_meta.TransferSyntaxUID) for ds in datasets
                                            if str(ds.SOPClassUID) == cls_][0])  # fmt: skip
        # no host name: the chain is verified, the name not (see lungseg.node.tls)
        tls_args = (self.tls.client_context(), None) if self.tls else None
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            raise Undelivered(
                "no association (destination down or refusing us"
                + (", or its TLS certificate not signed by --tls-ca)" if self.tls else ")")
            )
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise Undelivered("no answer to C-STORE")
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise Undelivered(f"C-STORE failed with status 0x{code:04X}")
        finally:
            assoc.release()


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb server's STOW-RS (:class:`lungseg.storage.dicomweb.DicomWebClient`)."""

    url: str
    timeout_s: float = 30.0

    def __str__(self) -> str:
        return self.url

    def send(self, files: Sequence[bytes]) -> None:
        from lungseg.storage.dicomweb import DicomWebClient, DicomWebError, parse_url

        try:
            DicomWebClient(parse_url(self.url)[0], self.timeout_s).store(files)
        except DicomWebError as exc:
            raise Undelivered(str(exc)) from None
