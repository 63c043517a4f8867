"""A real Orthanc server with its DICOMweb plugin, on a free loopback port, for the tests.

:class:`Orthanc` writes a configuration into a temporary folder (storage and index there,
DICOM network off, HTTP on 127.0.0.1 only, the DICOMweb plugin at ``/dicom-web/``; with
``user``/``password`` basic authentication is required), starts the Debian ``Orthanc``
binary, waits until ``/system`` answers and stops it (SIGTERM, then SIGKILL) in
:meth:`Orthanc.stop`. The Debian packages ``orthanc`` and ``orthanc-dicomweb`` are installed
by ``scripts/install-and-test.sh``; :func:`orthanc_available` says whether they are here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_binary() -> str | None:
    for p in ORTHANC_BINARIES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("Orthanc")


def orthanc_available() -> bool:
    """Whether the Orthanc binary and its DICOMweb plugin are installed."""
    return orthanc_binary() is not None and Path(DICOMWEB_PLUGIN).is_file()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process (see the module docstring).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT`` (the REST API).
    dicomweb : str
        ``http://127.0.0.1:PORT/dicom-web`` (the DICOMweb root).
    """

    def __init__(self, folder: Path, *, user: str | None = None, password: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder / "orthanc.log"

    def config(self) -> dict:
        cfg = {
            "Name": "ghanet-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "HttpThreadsCount": 8,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None,
            "RegisteredUsers": {self.user: self.password} if self.user else {},
            "StorageCompression": False,
            "MaximumPatientCount": 0,
            "HttpCompressionEnabled": False,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "StableAge": 1,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Host": f"127.0.0.1:{self.port}",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        return cfg

    def headers(self) -> dict[str, str]:
        if self.user is None:
            return {}
        tok = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {tok}"}

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        req = urllib.request.Request(self.url + path, headers=self.headers())
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
            return r.read()

    def start(self, timeout: float = 30.0) -> Orthanc:
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        cfg_path = self.folder / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [binary, "--logdir=" + str(self.folder), str(cfg_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                self.get("/system", timeout=1.0)
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def clear(self) -> None:
        """Delete every patient (a clean server between tests that need one)."""
        for pid in json.loads(self.get("/patients")):
            req = urllib.request.Request(
                f"{self.url}/patients/{pid}", method="DELETE", headers=self.headers()
            )
            urllib.request.urlopen(req, timeout=10).read()  # noqa: S310 - loopback

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- test slides


def dicomize(source: Path, folder: Path, **kw) -> list[Path]:
    """DICOM-WSI files of ``source`` made with wsidicomizer (an Aperio SVS's JPEG tiles pass
    through unchanged; other TIFFs are re-encoded), without label/overview/thumbnail."""
    from wsidicomizer import WsiDicomizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = WsiDicomizer.convert(source, folder, include_label=False, include_overview=False,
                                 include_thumbnail=False, **{"tile_size": None, **kw})
    return sorted(Path(f) for f in files)


def series_url(server: Orthanc, files: list[Path]) -> str:
    """The DICOMweb series URL of DICOM ``files`` (one series) on ``server``."""
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def stow_files(server: Orthanc, files: list[Path]) -> str:
    """Store ``files`` on ``server`` with STOW-RS; returns their series URL."""
    from napari_ghanet.io.dicomweb import DicomWebClient

    client = DicomWebClient(server.dicomweb, headers=server.headers())
    client.stow([Path(f).read_bytes() for f in files])
    return series_url(server, files)


# --------------------------------------------------------------------------- faults


class FaultProxy:
    """An HTTP proxy on loopback in front of a real server that injects the faults a real
    server does not produce on demand: ``fault(method, path, n)`` (n: the request's number,
    from 1) returns None (forward), ``("status", code)`` (answer ``code`` without
    forwarding), ``("truncate",)`` (forward, then cut the body in half),
    ``("delay", seconds)`` (wait, then forward), ``("after", code)`` (forward, then
    answer ``code`` instead of the server's answer) or ``("call", fn)`` (answer
    ``fn(method, path) -> (status, body)``: a request the server lacks, such as DICOMweb
    DELETE done through Orthanc's own REST API)."""

    def __init__(self, upstream: str, fault):
        import http.server
        import threading

        self.upstream, self.fault, self.count = upstream.rstrip("/"), fault, 0
        self.seen_headers: list[dict] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                import requests

                proxy.count += 1
                n = proxy.count
                proxy.seen_headers.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                what = proxy.fault(self.command, self.path, n)
                if what and what[0] == "status":
                    self._send(what[1], b"busy", {"Content-Type": "text/plain"})
                    return
                if what and what[0] == "call":
                    status, data = what[1](self.command, self.path)
                    self._send(status, data, {"Content-Type": "application/json"})
                    return
                if what and what[0] == "delay":
                    time.sleep(what[1])
                hdrs = {k: v for k, v in self.headers.items()
                        if k.lower() not in ("host", "content-length", "connection")}
                r = requests.request(self.command, proxy.upstream + self.path, headers=hdrs,
                                     data=body, timeout=60)
                data = r.content
                if what and what[0] == "truncate":
                    data = data[: len(data) // 2]
                status = what[1] if what and what[0] == "after" else r.status_code
                keep = {k: v for k, v in r.headers.items()
                        if k.lower() in ("content-type",)}
                self._send(status, data, keep)

            def _send(self, status, data, headers):
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def orthanc_delete_series(server: Orthanc, series_uid: str) -> int:
    """Delete a series through Orthanc's REST API (its DICOMweb plugin has no DELETE);
    returns the HTTP status a DICOMweb DELETE would give (204, or 404 when absent)."""
    req = urllib.request.Request(f"{server.url}/tools/lookup", data=series_uid.encode(),
                                 method="POST", headers=server.headers())
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        hits = [h for h in json.loads(r.read()) if h.get("Type") == "Series"]
    for h in hits:
        req = urllib.request.Request(f"{server.url}/series/{h['ID']}", method="DELETE",
                                     headers=server.headers())
        urllib.request.urlopen(req, timeout=10).read()  # noqa: S310 - loopback
    return 204 if hits else 404


def need_orthanc() -> None:
    """Skip where Orthanc and its DICOMweb plugin are not installed, but fail in CI (``CI``
    set), where scripts/install-and-test.sh installs them: like ``need()`` for packages."""
    import pytest

    if orthanc_available():
        return
    message = ("Orthanc with its DICOMweb plugin is not installed "
               "(apt-get install orthanc orthanc-dicomweb)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
