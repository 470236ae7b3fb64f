"""The node's TLS options: all three or none, and files that are not what they should be are
one line naming the file, before anything listens."""

from __future__ import annotations

import pytest

from lungseg.core.errors import LungsegError
from lungseg.node.tls import TlsFiles


def test_no_option_means_no_tls():
    assert TlsFiles.from_options(None, None, None) is None


def test_a_missing_option_is_named(tmp_path):
    with pytest.raises(LungsegError) as info:
        TlsFiles.from_options(tmp_path / "a.crt", None, None)
    assert "missing --tls-key, --tls-ca" in str(info.value)


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_a_file_that_is_not_pem_is_one_line_naming_it(tmp_path, which):
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for path in files.values():
        path.write_text("not a certificate\n")
    files[which].unlink()  # absent
    with pytest.raises(LungsegError) as info:
        TlsFiles.from_options(files["cert"], files["key"], files["ca"])
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(files[which]) in message, message


def test_a_certificate_without_its_key_is_one_line(tmp_path):
    for name in ("cert", "key", "ca"):
        (tmp_path / f"{name}.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(LungsegError) as info:
        TlsFiles.from_options(*(tmp_path / f"{n}.pem" for n in ("cert", "key", "ca")))
    assert str(info.value).startswith(f"{tmp_path / 'cert.pem'}: --tls-cert/--tls-key")
