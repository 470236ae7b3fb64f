"""Azure Blob Storage: read a dataset from ``az://CONTAINER/PREFIX`` and upload one there.

Needs the ``azure`` extra (``pip install 'lungseg[azure]'``); importing this package without it
raises ``ImportError``, which :func:`lungseg.storage.sources.open_source` and ``lungseg upload``
turn into that advice.

Modules, by concern:

* :mod:`~lungseg.storage.azure.connection`: credentials from the environment (never shown), the
  account and container clients, retries and timeouts, SDK errors translated into one line;
* :mod:`~lungseg.storage.azure.transfer`: the one parallel transfer loop with its progress display,
  shared by downloads and uploads;
* :mod:`~lungseg.storage.azure.source`: :class:`AzureSource`, the read side, through a local
  content cache;
* :mod:`~lungseg.storage.azure.upload`: :func:`upload`, publishing a folder, one
  :func:`~lungseg.storage.azure.upload.put_file` per file;
* :mod:`~lungseg.storage.azure.sink`: :class:`AzureSink`, where ``lungseg segment`` writes its
  results (whole-blob writes, a leased lock).
"""

from lungseg.storage.azure.connection import (
    CONNECTION_TIMEOUT_S,
    DEFAULT_WORKERS,
    ENV_ACCOUNT,
    ENV_ACCOUNT_URL,
    ENV_CONNECTION_STRING,
    ENV_KEY,
    ENV_SAS,
    NO_CREDENTIALS,
    READ_TIMEOUT_S,
    RETRY,
    BlobLocation,
    parse_url,
)
from lungseg.storage.azure.sink import AzureSink
from lungseg.storage.azure.source import AzureSource
from lungseg.storage.azure.transfer import TransferStats
from lungseg.storage.azure.upload import upload

__all__ = [
    "CONNECTION_TIMEOUT_S",
    "DEFAULT_WORKERS",
    "ENV_ACCOUNT",
    "ENV_ACCOUNT_URL",
    "ENV_CONNECTION_STRING",
    "ENV_KEY",
    "ENV_SAS",
    "NO_CREDENTIALS",
    "READ_TIMEOUT_S",
    "RETRY",
    "AzureSink",
    "AzureSource",
    "BlobLocation",
    "TransferStats",
    "parse_url",
    "upload",
]
