"""A real Azure Blob Storage emulator (Azurite, from ``npm ci``) for the Azure tests.

``azurite`` is one emulator per test session; ``own_azurite`` gives a test its own, which it may
stop and restart (same port, same storage folder). Both know two accounts: Azurite's well-known
``devstoreaccount1`` and ``lungsegacct``, whose key is a recognisable secret the tests look for
in every output.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"
WELL_KNOWN_ACCOUNT = "devstoreaccount1"
WELL_KNOWN_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
SECRET_ACCOUNT = "lungsegacct"
SECRET_TEXT = "LUNGSEG-SECRET-KEY-7f3a9c-must-never-appear-in-output"
SECRET_KEY = base64.b64encode(SECRET_TEXT.encode()).decode()
START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection_string(port: int, account: str, key: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{account};"
    )


@dataclass
class Azurite:
    """One ``azurite-blob`` process on 127.0.0.1, restartable on the same port and folder."""

    location: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    secret_text: str = SECRET_TEXT
    secret_key: str = SECRET_KEY
    secret_account: str = SECRET_ACCOUNT

    @property
    def connection_string(self) -> str:
        """The well-known account's connection string."""
        return connection_string(self.port, WELL_KNOWN_ACCOUNT, WELL_KNOWN_KEY)

    @property
    def secret_connection_string(self) -> str:
        """The connection string of the account whose key is :data:`SECRET_KEY`."""
        return connection_string(self.port, SECRET_ACCOUNT, SECRET_KEY)

    def account_url(self, account: str = WELL_KNOWN_ACCOUNT) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def start(self) -> None:
        log = open(self.location.parent / f"{self.location.name}.log", "ab")  # noqa: SIM115
        accounts = f"{WELL_KNOWN_ACCOUNT}:{WELL_KNOWN_KEY};{SECRET_ACCOUNT}:{SECRET_KEY}"
        env = {**os.environ, "AZURITE_ACCOUNTS": accounts}
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.location),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"azurite exited with {self.process.returncode}: {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"azurite did not answer on port {self.port} in {START_TIMEOUT_S}s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), so the emulator saves its metadata for a restart."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        path = self.location.parent / f"{self.location.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _start(folder: Path) -> Azurite:
    if not AZURITE_BIN.exists():
        pytest.skip(f"Azurite not installed ({AZURITE_BIN} missing): run npm ci in {REPO}")
    if shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js (node not on PATH)")
    folder.mkdir(parents=True)
    server = Azurite(folder)
    server.start()
    return server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """An Azurite shared by the session's tests (each test uses its own container)."""
    server = _start(tmp_path_factory.mktemp("azurite") / "storage")
    yield server
    server.stop()


@pytest.fixture
def own_azurite(tmp_path: Path):
    """An Azurite for one test, which may stop and restart it."""
    server = _start(tmp_path / "azurite")
    yield server
    server.stop()


@pytest.fixture
def unreachable_connection_string() -> str:
    """Well-formed credentials for a port where nothing listens."""
    return connection_string(free_port(), WELL_KNOWN_ACCOUNT, WELL_KNOWN_KEY)


@pytest.fixture(autouse=True)
def azure_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Azure credentials from the machine, and a fresh content cache; returns the cache."""
    for name in list(os.environ):
        if name.startswith(("AZURE_STORAGE_", "AZURE_CLIENT_", "AZURE_TENANT_")):
            monkeypatch.delenv(name)
    cache = tmp_path / "lungseg-cache"
    monkeypatch.setenv("LUNGSEG_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def cxr_subset(covid_cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 pairs of the shared COVID set (COVID, Normal and Unknown) with ``METADATA.csv``."""
    out = tmp_path_factory.mktemp("cxr-subset")
    for cls, count in (("COVID", 37), ("Normal", 2), ("Unknown", 1)):
        names = sorted(p.name for p in (covid_cxr / cls / "images").iterdir())[:count]
        for sub in ("images", "masks"):
            (out / cls / sub).mkdir(parents=True)
            for name in names:
                shutil.copyfile(covid_cxr / cls / sub / name, out / cls / sub / name)
    shutil.copyfile(covid_cxr / "METADATA.csv", out / "METADATA.csv")
    return out
