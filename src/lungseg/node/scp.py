"""The Storage SCP: who may connect, which instances are taken, which are skipped.

Only the ``AE title @ host`` pairs the node is told to trust may associate; anyone else is
refused at association (A-ASSOCIATE-RJ, "calling AE title not recognised"), before a byte of
pixel data arrives. Of what a trusted sender stores, CR and DX (for presentation and for
processing) images that are frontal chest X-rays are spooled; the rest is answered with
success (so the sender does not retry it forever) and skipped with one log line why.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lungseg.core.errors import LungsegError
from lungseg.data.dicom_header import not_frontal_chest

log = logging.getLogger("lungseg.node")

#: The image storage SOP classes the node accepts.
IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
}
#: The modalities the node segments (what its image classes hold).
NODE_MODALITIES = frozenset({"CR", "DX"})
_SUCCESS, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


@dataclass(frozen=True)
class Peer:
    """A trusted sender: its AE title and the address it connects from."""

    ae_title: str
    host: str

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``AE@host`` (a host name is resolved once, now)."""
        ae, sep, host = text.partition("@")
        if not sep or not ae.strip() or not host or len(ae.strip()) > 16:
            raise LungsegError(f"--allow {text!r}: expected AE@host (AE title of 1-16 characters)")
        try:
            address = socket.gethostbyname(host)
        except OSError:
            raise LungsegError(f"--allow {text!r}: unknown host {host!r}") from None
        return cls(ae.strip(), address)


def instance_ref(uid: str) -> str:
    """How logs name an instance: a short digest of its UID, which says nothing about anyone."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


def why_skip(ds) -> str:
    """Why an instance is not a frontal chest X-ray, or ``""`` when it is one: stricter than
    ``segment``'s review rule, the node takes CR and DX only (:func:`not_frontal_chest`)."""
    problem = not_frontal_chest(ds, NODE_MODALITIES, require_modality=True)
    if problem:
        return problem
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame image"
    return ""


def transfer_syntaxes() -> list[str]:
    """The uncompressed syntaxes, plus every compressed one pydicom can decode here."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import AllTransferSyntaxes, UncompressedTransferSyntaxes

    found = list(UncompressedTransferSyntaxes)
    for uid in AllTransferSyntaxes:
        if uid in found:
            continue
        try:
            if get_decoder(uid).is_available:
                found.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return found


def storage_ae(
    ae_title: str,
    allow: Iterable[Peer],
    store: Callable[[str, bytes], None],
    skipped: Callable[[str, str], None],
):
    """The pynetdicom application entity and its event handlers.

    Args:
        ae_title: the node's own AE title.
        allow: the trusted senders.
        store: ``(SOP Instance UID, file bytes)``: spools one instance durably; raises
            ``OSError`` when it cannot (the sender is told to retry).
        skipped: ``(SOP Instance UID, why)``: an instance taken but not segmented.

    Returns:
        ``(ae, handlers)`` for ``ae.start_server(..., evt_handlers=handlers)``.
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    from lungseg.node.spool import valid_uid

    trusted = {(p.ae_title, p.host) for p in allow}
    ae = AE(ae_title=ae_title)
    syntaxes = transfer_syntaxes()
    for uid in IMAGE_CLASSES:
        ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context(Verification)

    def on_requested(event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        if (calling, assoc.requestor.address) not in trusted:
            log.warning("refused association from %s@%s: not in --allow", calling,
                        assoc.requestor.address)  # fmt: skip
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.is_rejected = True
            assoc.kill()

    def on_store(event) -> int:
        try:
            ds = event.dataset
            uid = str(ds.SOPInstanceUID)
        except Exception:
            return _CANNOT_UNDERSTAND
        if not valid_uid(uid):
            return _CANNOT_UNDERSTAND
        why = why_skip(ds)
        if why:
            skipped(uid, why)
            return _SUCCESS
        try:
            store(uid, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("cannot spool instance %s (%s): refused, the sender will retry",
                      instance_ref(uid), exc.strerror or exc)  # fmt: skip
            return _OUT_OF_RESOURCES
        return _SUCCESS

    handlers = [(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store)]
    return ae, handlers
