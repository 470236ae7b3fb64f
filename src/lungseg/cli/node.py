"""``lungseg dicom-node``: a DICOM Storage SCP that segments what a PACS sends and sends the
results back (see :mod:`lungseg.node`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lungseg.cli import app
from lungseg.cli.options import InferenceDevice
from lungseg.models.shipped import MODEL_NAMES


@app.command("dicom-node")
def dicom_node_command(
    spool: Annotated[
        Path, typer.Option(help="Folder (local disk) where received instances and results wait.")
    ],
    allow: Annotated[
        list[str],
        typer.Option(
            help="A trusted sender, AE@host (repeat for each); others are refused.",
            metavar="AE@HOST",
        ),
    ],
    send_to: Annotated[
        str | None,
        typer.Option(
            help="Destination of the results by C-STORE: AE@host:port.", metavar="AE@HOST:PORT"
        ),
    ] = None,
    stow: Annotated[
        str | None,
        typer.Option(
            help="Destination by STOW-RS instead: the DICOMweb root URL (bearer token from "
            "$LUNGSEG_DICOMWEB_TOKEN).",
            metavar="URL",
        ),
    ] = None,
    ae_title: Annotated[str, typer.Option(help="This node's AE title.")] = "LUNGSEG",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    model: Annotated[
        str,
        typer.Option(
            help=f"The model: shipped ({', '.join(MODEL_NAMES)}), a checkpoint, a run directory "
            "or an exported .onnx file."
        ),
    ] = "unet",
    device: InferenceDevice = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    max_backoff: Annotated[
        float, typer.Option(help="Longest wait in seconds between tries of a destination down.")
    ] = 60.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="DICOM over TLS: this node's certificate (PEM), shown to senders and to the "
            "--send-to destination.",
            metavar="PEM",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The certificate's private key (PEM).", metavar="PEM")
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            help="CA certificates (PEM) that must have signed every sender's and the "
            "destination's certificate.",
            metavar="PEM",
        ),
    ] = None,
) -> None:
    """Receive chest X-rays by C-STORE, segment them and send a DICOM SEG and SR of each back;
    nothing spooled is lost by a crash (restart it with the same --spool)."""
    import logging

    from lungseg.core.errors import LungsegError
    from lungseg.core.interrupts import sigterm_as_interrupt
    from lungseg.core.locking import exclusive
    from lungseg.node.scp import Peer
    from lungseg.node.send import CStoreDestination, StowDestination
    from lungseg.node.service import Node, NodeSettings
    from lungseg.node.tls import TlsFiles

    def load():
        import torch

        from lungseg.core.devices import pipeline_threads
        from lungseg.inference.segmenter import load_model

        # The same share of the cores as segment's model: the rest receive, decode and send.
        threads = pipeline_threads()
        torch.set_num_threads(threads)
        return load_model(model, device=device, threads=threads)

    if (send_to is None) == (stow is None):
        raise LungsegError("give one destination: --send-to AE@host:port or --stow URL")
    if batch_size < 1:
        raise LungsegError(f"--batch-size must be at least 1, got {batch_size}")
    peers = [Peer.parse(a) for a in allow]
    tls = TlsFiles.from_options(tls_cert, tls_key, tls_ca)
    destination = (
        CStoreDestination.parse(send_to, ae_title, tls) if send_to else StowDestination(str(stow))
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # pynetdicom logs every association and the datasets' summaries at INFO: not patient data
    # the node's log should hold.
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    settings = NodeSettings(
        str(spool), ae_title=ae_title, host=host, port=port, allow=peers,
        batch_size=batch_size, max_backoff_s=max_backoff, tls=tls,
    )  # fmt: skip
    # Two nodes on one spool would segment and send the same instances twice.
    with exclusive(spool, "dicom-node"):
        node = Node(load, settings, destination)
        # SIGTERM (systemd, docker stop) stops it as Ctrl-C does: the batch in hand finished,
        # the encoder processes ended.
        try:  # a start that fails half-way (a full spool disk) still stops what it started
            with sigterm_as_interrupt():
                node.start()
                node.wait()
        except KeyboardInterrupt:
            typer.echo("stopping (what is spooled is finished on the next start)", err=True)
        finally:
            node.stop()
