"""A small DICOMweb client: QIDO-RS searches, WADO-RS metadata and frames, STOW-RS.

A slide on a DICOMweb archive is named by its series URL,
``http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>``
(``ROOT`` is the server's DICOMweb root, e.g. ``dicom-web``); a study URL
(``.../studies/<StudyInstanceUID>``) stands for the study's slide-microscopy series.
:func:`parse_url` splits such a URL into a :class:`DicomWebRef`.

:class:`DicomWebClient` sends the requests. Credentials come from the environment, never
from the URL (a URL with ``user:password@`` is refused, since URLs end up in reports and
logs): ``GHANET_DICOMWEB_TOKEN_FILE`` (set by ``--dicomweb-token-file FILE``) or
``GHANET_DICOMWEB_TOKEN`` hold a bearer token, or ``basic USER:PASSWORD`` for basic
authentication (:func:`credentials_from_env`). The secret only ever goes into the
``Authorization`` header; no message, log line or report contains it. TLS certificates are
verified (``GHANET_DICOMWEB_CA_BUNDLE`` names a CA file for a private archive).

Faults: a refused or reset connection, a timeout, HTTP 429/500/502/503/504 and a truncated
multipart body are retried a bounded number of times with exponential back-off; HTTP
401/403/404 and other client errors are not. What cannot be done is a
:class:`DicomWebError` with one line naming the server and what was asked for (never the
credentials, never a traceback at the command line).

Examples
--------
>>> ref = parse_url("https://pacs.example.org:8443/dicom-web/studies/1.2.3/series/1.2.3.4")
>>> ref.root, ref.study, ref.series, ref.server
('https://pacs.example.org:8443/dicom-web', '1.2.3', '1.2.3.4', 'https://pacs.example.org:8443')
>>> is_dicomweb_url("slide.svs"), is_dicomweb_url("http://h/dicom-web/studies/1.2")
(False, True)
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from napari_ghanet.errors import GHANetError, SlideError
from napari_ghanet.io.safe_read import read_regular_file

logger = logging.getLogger(__name__)

__all__ = [
    "DicomWebClient",
    "DicomWebError",
    "DicomWebRef",
    "credentials_from_env",
    "is_dicomweb_url",
    "parse_url",
]

TOKEN_ENV = "GHANET_DICOMWEB_TOKEN"
TOKEN_FILE_ENV = "GHANET_DICOMWEB_TOKEN_FILE"
CA_BUNDLE_ENV = "GHANET_DICOMWEB_CA_BUNDLE"
#: HTTP statuses worth another try (the server or a proxy is busy or restarting)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_UID = r"[0-9]+(?:\.[0-9]+)*"
_URL_RE = re.compile(
    rf"^(?P<root>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<study>{_UID})"
    rf"(?:/series/(?P<series>{_UID}))?/?$"
)
#: the largest metadata or search answer accepted (bytes)
MAX_JSON_BYTES = 256 * 2**20
#: the largest secret file read (bytes)
MAX_TOKEN_BYTES = 64 * 1024


class DicomWebError(SlideError):
    """A DICOMweb server cannot be reached, refuses a request or answers nonsense."""


def is_dicomweb_url(text: object) -> bool:
    """Whether ``text`` is an ``http(s)://`` URL (a DICOMweb slide, study or server root)."""
    return isinstance(text, str) and text[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class DicomWebRef:
    """A DICOMweb study or series: ``root`` (no trailing slash), ``study``, ``series``
    (None for a whole study)."""

    root: str
    study: str
    series: str | None = None

    @property
    def server(self) -> str:
        """``scheme://host[:port]`` (what a message names)."""
        parts = urlsplit(self.root)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def url(self) -> str:
        text = f"{self.root}/studies/{self.study}"
        return text if self.series is None else f"{text}/series/{self.series}"

    def where(self) -> str:
        """``server, series UID`` (or study) for a message."""
        return (f"{self.server}, series {self.series}" if self.series
                else f"{self.server}, study {self.study}")


def _check_netloc(text: str) -> None:
    netloc = urlsplit(text).netloc
    if "@" in netloc:
        raise DicomWebError(
            f"{urlsplit(text).scheme}://{netloc.rsplit('@', 1)[1]}: the URL carries credentials; "
            f"put them in a file given with --dicomweb-token-file (or {TOKEN_ENV}) instead, "
            "so they never appear in reports or logs"
        )
    if not netloc:
        raise DicomWebError(f"{text}: no server in the URL")


def parse_url(text: str) -> DicomWebRef:
    """Split a DICOMweb study or series URL (see the module docstring).

    Raises
    ------
    DicomWebError
        Not ``http(s)://HOST/ROOT/studies/<UID>[/series/<UID>]``, or credentials in the URL.
    """
    text = str(text).strip()
    _check_netloc(text)
    m = _URL_RE.match(text)
    if m is None:
        raise DicomWebError(
            f"{text}: not a DICOMweb study or series URL; expected "
            "http(s)://HOST[:PORT]/ROOT/studies/<StudyInstanceUID>[/series/<SeriesInstanceUID>]"
        )
    return DicomWebRef(m.group("root").rstrip("/"), m.group("study"), m.group("series"))


def parse_root(text: str) -> str:
    """A DICOMweb server root URL without its trailing slash (``--dicomweb-query``)."""
    text = str(text).strip()
    if not is_dicomweb_url(text):
        raise DicomWebError(f"{text}: a DICOMweb server root must be an http(s):// URL")
    _check_netloc(text)
    return text.rstrip("/")


# --------------------------------------------------------------------------- credentials


def _read_secret(path: str) -> str:
    try:  # a regular file of bounded size (no FIFO or device is opened)
        data = read_regular_file(path, "DICOMweb token file", MAX_TOKEN_BYTES)
    except GHANetError as exc:
        raise DicomWebError(str(exc)) from None
    text = data.decode("utf-8", "replace").strip()
    if not text or "\n" in text:
        raise DicomWebError(f"the DICOMweb token file {path} must hold exactly one line "
                            "(a bearer token, or 'basic USER:PASSWORD')")
    return text


def credentials_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The ``Authorization`` header from ``GHANET_DICOMWEB_TOKEN_FILE`` (a file) or
    ``GHANET_DICOMWEB_TOKEN``; empty when neither is set.

    A value ``basic USER:PASSWORD`` gives basic authentication, anything else is a bearer
    token.

    Examples
    --------
    >>> credentials_from_env({"GHANET_DICOMWEB_TOKEN": "abc"})
    {'Authorization': 'Bearer abc'}
    >>> credentials_from_env({"GHANET_DICOMWEB_TOKEN": "basic u:p"})
    {'Authorization': 'Basic dTpw'}
    >>> credentials_from_env({})
    {}
    """
    import base64

    env = os.environ if env is None else env
    secret = None
    if env.get(TOKEN_FILE_ENV):
        secret = _read_secret(env[TOKEN_FILE_ENV])
    elif env.get(TOKEN_ENV):
        secret = env[TOKEN_ENV].strip()
    if not secret:
        return {}
    if secret[:6].lower() == "basic ":
        pair = secret[6:].strip()
        if ":" not in pair:
            raise DicomWebError("basic DICOMweb credentials must read 'basic USER:PASSWORD'")
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    if secret[:7].lower() == "bearer ":
        secret = secret[7:].strip()
    return {"Authorization": f"Bearer {secret}"}


# --------------------------------------------------------------------------- multipart


class _Truncated(DicomWebError):
    """A multipart body ended before its closing boundary (retried)."""


def _boundary(content_type: str) -> str:
    m = re.search(r'boundary="?([^";]+)"?', content_type or "", re.IGNORECASE)
    if m is None:
        raise DicomWebError(f"a multipart answer without a boundary ({content_type!r}): "
                            "the server is not a DICOMweb server")
    return m.group(1)


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts (headers, content) of a ``multipart/related`` body.

    Raises ``_Truncated`` when the closing boundary is missing.

    Examples
    --------
    >>> body = b"--b\\r\\nContent-Type: image/jpeg\\r\\n\\r\\nAB\\r\\n--b\\r\\n\\r\\nC\\r\\n--b--\\r\\n"
    >>> [(h.get("content-type"), c) for h, c in split_multipart(body, 'multipart/related; boundary=b')]
    [('image/jpeg', b'AB'), (None, b'C')]
    """
    delim = b"--" + _boundary(content_type).encode("latin-1")
    if (delim + b"--") not in body:
        raise _Truncated()
    pieces = body.split(delim)
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        if piece.startswith(b"\r\n"):  # the end of the boundary line
            piece = piece[2:]
        if piece.startswith(b"\r\n"):  # a part without headers
            head, content = b"", piece[2:]
        else:
            head, sep, content = piece.partition(b"\r\n\r\n")
            if not sep:
                raise _Truncated()
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = {}
        for line in head.split(b"\r\n"):
            key, colon, value = line.partition(b":")
            if colon:
                headers[key.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        parts.append((headers, content))
    return parts


def multipart_body(parts: Iterable[bytes], content_type: str) -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` and its Content-Type header."""
    boundary = uuid.uuid4().hex
    chunks = []
    for p in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(), p, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


# --------------------------------------------------------------------------- client


class DicomWebClient:
    """Requests to one DICOMweb server (see the module docstring).

    Parameters
    ----------
    root : str
        The server's DICOMweb root URL.
    headers : dict, optional
        Extra headers; default: the credentials of :func:`credentials_from_env`.
    verify : bool or str
        TLS verification (a CA bundle path allowed); default on.
    timeout : (float, float)
        Connect and read timeouts in seconds.
    retries : int
        Further tries of a transient failure.
    backoff : float
        Seconds before the first retry; doubled each time (at most 8 s).
    """

    def __init__(self, root: str, *, headers: dict[str, str] | None = None,
                 verify: bool | str | None = None, timeout: tuple[float, float] = (5.0, 60.0),
                 retries: int = 4, backoff: float = 0.25):
        self.root = parse_root(root)
        self.server = f"{urlsplit(self.root).scheme}://{urlsplit(self.root).netloc}"
        self._headers = dict(credentials_from_env() if headers is None else headers)
        if verify is None:
            verify = os.environ.get(CA_BUNDLE_ENV) or True
        self.verify = verify
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._local = threading.local()
        self.requests = 0  # requests sent (tests and benchmarks)

    def __repr__(self) -> str:  # never the headers: they hold the credentials
        return f"<DicomWebClient {self.root}>"

    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            import requests

            s = requests.Session()
            s.headers.update(self._headers)
            s.verify = self.verify
            s.trust_env = False  # no proxy or netrc credentials picked up silently
            self._local.session = s
        return s

    def request(self, method: str, path: str, *, what: str, headers: dict | None = None,
                data: bytes | None = None, params: dict | None = None, ok=(200,),
                parse=None) -> Any:
        """Send one request (``path`` relative to the root, or a full URL on this server)
        with retries; returns ``parse(response)`` or the response.

        ``parse`` may raise ``_Truncated`` for a body cut short (retried)."""
        import requests

        url = path if path.startswith(("http://", "https://")) else f"{self.root}/{path.lstrip('/')}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, self.backoff * 2 ** (attempt - 1)))
            self.requests += 1
            try:
                r = self._session().request(method, url, headers=headers, data=data,
                                            params=params, timeout=self.timeout)
            except requests.exceptions.SSLError as exc:
                raise DicomWebError(
                    f"{self.server}: TLS certificate verification failed ({what}): "
                    f"{_short(exc)}; give the archive's CA with {CA_BUNDLE_ENV}=FILE"
                ) from None
            except requests.exceptions.Timeout:
                last = f"no answer within {self.timeout[1]:g} s"
                continue
            except requests.exceptions.ConnectionError as exc:
                last = ("connection refused" if "refused" in str(exc).lower()
                        else f"connection failed ({_short(exc)})")
                continue
            status = r.status_code
            if status in ok:
                if parse is None:
                    return r
                try:
                    return parse(r)
                except _Truncated:
                    last = "the answer was cut short"
                    continue
                except requests.exceptions.RequestException as exc:
                    last = f"the answer was cut short ({_short(exc)})"
                    continue
            if status in TRANSIENT_STATUS:
                last = f"HTTP {status}"
                continue
            raise DicomWebError(self._refusal(status, what))
        raise DicomWebError(
            f"{self.server}: {what} failed after {self.retries + 1} tries: {last}"
        )

    def _refusal(self, status: int, what: str) -> str:
        if status == 401:
            return (f"{self.server}: {what}: HTTP 401, the server wants credentials; give them "
                    f"with --dicomweb-token-file FILE or {TOKEN_ENV}")
        if status == 403:
            return (f"{self.server}: {what}: HTTP 403, the credentials given may not read "
                    "or write this; ask the archive's administrator")
        if status == 404:
            return f"{self.server}: {what}: HTTP 404, no such object on this server"
        return f"{self.server}: {what}: HTTP {status}"

    # -- QIDO / WADO / STOW

    def json(self, path: str, *, what: str, params: dict | None = None) -> list[dict]:
        """A DICOM JSON answer (QIDO-RS search or WADO-RS metadata); 204 is an empty list."""

        def parse(r):
            if r.status_code == 204 or not r.content:
                return []
            if len(r.content) > MAX_JSON_BYTES:
                raise DicomWebError(f"{self.server}: {what}: answer larger than "
                                    f"{MAX_JSON_BYTES >> 20} MiB")
            try:
                value = r.json()
            except ValueError:
                raise _Truncated() from None
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise DicomWebError(f"{self.server}: {what}: the answer is not DICOM JSON")
            return value

        return self.request("GET", path, what=what, params=params, ok=(200, 204),
                            headers={"Accept": "application/dicom+json"}, parse=parse)

    def series_metadata(self, study: str, series: str) -> list[dict]:
        return self.json(f"studies/{study}/series/{series}/metadata",
                         what=f"metadata of series {series}")

    def search_series(self, study: str | None = None, params: dict | None = None) -> list[dict]:
        path = f"studies/{study}/series" if study else "series"
        return self.json(path, what=f"search for series{' of study ' + study if study else ''}",
                         params=params)

    def search_studies(self, params: dict | None = None) -> list[dict]:
        return self.json("studies", what="search for studies", params=params)

    def search_instances(self, study: str, series: str) -> list[dict]:
        return self.json(f"studies/{study}/series/{series}/instances",
                         what=f"search for the instances of series {series}")

    def frames(self, study: str, series: str, sop: str, numbers: Sequence[int]
               ) -> tuple[list[bytes], str | None]:
        """Frames ``numbers`` (1-based) of one instance, as stored (any transfer syntax),
        and the transfer syntax UID the server names (None when it names none)."""
        nums = ",".join(str(int(n)) for n in numbers)
        what = f"frames {nums if len(numbers) <= 4 else f'{numbers[0]}..{numbers[-1]}'} of series {series}"

        def parse(r):
            ctype = r.headers.get("Content-Type", "")
            parts = split_multipart(r.content, ctype)
            if len(parts) != len(numbers):
                if len(parts) < len(numbers):
                    raise _Truncated()
                raise DicomWebError(f"{self.server}: {what}: {len(parts)} frames in the "
                                    f"answer, {len(numbers)} asked for")
            m = re.search(r"transfer-syntax=([0-9.]+)", ctype)
            ts = m.group(1) if m else None
            if ts is None:
                m = re.search(r"transfer-syntax=([0-9.]+)", parts[0][0].get("content-type", ""))
                ts = m.group(1) if m else None
            return [c for _, c in parts], ts

        path = f"studies/{study}/series/{series}/instances/{sop}/frames/{quote(nums, safe=',')}"
        return self.request(
            "GET", path, what=what, parse=parse,
            headers={"Accept": 'multipart/related; type="application/octet-stream"; '
                               "transfer-syntax=*"},
        )

    def instance(self, study: str, series: str, sop: str) -> bytes:
        """One instance as a DICOM Part-10 file (WADO-RS), as stored."""

        def parse(r):
            parts = split_multipart(r.content, r.headers.get("Content-Type", ""))
            if len(parts) != 1:
                raise _Truncated()
            return parts[0][1]

        return self.request(
            "GET", f"studies/{study}/series/{series}/instances/{sop}",
            what=f"instance {sop} of series {series}", parse=parse,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})

    def stow(self, blobs: Sequence[bytes], study: str | None = None) -> dict:
        """Store DICOM Part-10 files; returns the server's answer (DICOM JSON object).

        Raises DicomWebError when the server refuses any of them (FailedSOPSequence)."""
        body, ctype = multipart_body(blobs, "application/dicom")
        path = f"studies/{study}" if study else "studies"

        def parse(r):
            try:
                return r.json() if r.content else {}
            except ValueError:
                return {}

        answer = self.request("POST", path, what=f"storing {len(blobs)} object(s)", data=body,
                              headers={"Content-Type": ctype,
                                       "Accept": "application/dicom+json"},
                              ok=(200, 202), parse=parse)
        if isinstance(answer, list):
            answer = answer[0] if answer else {}
        failed = (answer or {}).get("00081198", {}).get("Value") or []
        if failed:
            raise DicomWebError(f"{self.server}: the server refused {len(failed)} of "
                                f"{len(blobs)} object(s) (STOW-RS FailedSOPSequence)")
        return answer or {}

    def delete_series(self, study: str, series: str) -> bool:
        """Delete a series where the server allows it (DICOMweb DELETE); False where it
        does not (HTTP 404/405/501)."""
        r = self.request("DELETE", f"studies/{study}/series/{series}",
                         what=f"deleting series {series}", ok=(200, 202, 204, 404, 405, 501))
        return r.status_code in (200, 202, 204)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def value(ds: dict, tag: str, default: Any = None) -> Any:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON dataset.

    Examples
    --------
    >>> value({"00280010": {"vr": "US", "Value": [240]}}, "00280010")
    240
    >>> value({}, "00280010", 0)
    0
    """
    el = ds.get(tag)
    if not isinstance(el, dict):
        return default
    v = el.get("Value")
    if not v:
        return default
    return v[0]


def values(ds: dict, tag: str) -> list:
    """All values of ``tag`` in a DICOM JSON dataset (empty list when absent)."""
    el = ds.get(tag)
    return list(el.get("Value") or []) if isinstance(el, dict) else []


# --------------------------------------------------------------------------- expansion


def _has_volume(client: DicomWebClient, study: str, series: str) -> bool:
    rows = client.json(f"studies/{study}/series/{series}/instances",
                       what=f"search for the instances of series {series}",
                       params={"includefield": "00080008"})
    kinds = [[str(v).upper() for v in values(r, "00080008")] for r in rows]
    known = [k for k in kinds if k]
    return not known or any(len(k) >= 3 and k[2] == "VOLUME" for k in known)


def study_series(client: DicomWebClient, study: str) -> list[str]:
    """Series URLs of a study's slide-microscopy series holding a VOLUME image, in
    series-number order."""
    rows = client.search_series(study, params={"Modality": "SM"})
    rows.sort(key=lambda r: (int(value(r, "00200011", 0) or 0), str(value(r, "0020000E", ""))))
    out = []
    for r in rows:
        series = str(value(r, "0020000E", ""))
        if series and str(value(r, "00080060", "SM")) == "SM" and _has_volume(client, study, series):
            out.append(f"{client.root}/studies/{study}/series/{series}")
    return out


def expand_url(text: str, query: str | None = None) -> list[str]:
    """The series URLs a URL stands for: a series URL itself; a study URL its
    slide-microscopy VOLUME series; a server root the SM series of the studies that
    ``query`` (QIDO-RS parameters, e.g. ``ModalitiesInStudy=SM&PatientID=X``) finds.

    Raises
    ------
    DicomWebError
        The URL is neither, or the study / query holds no slide.
    """
    from urllib.parse import parse_qsl

    text = str(text).strip()
    if _URL_RE.match(text) is None or query:
        if "/studies/" in text and not query:
            parse_url(text)  # names what is wrong with it
        root = parse_root(text)
        params = dict(parse_qsl(query or "ModalitiesInStudy=SM", keep_blank_values=False))
        params.setdefault("ModalitiesInStudy", "SM")
        client = DicomWebClient(root)
        studies = [str(value(r, "0020000D", "")) for r in client.search_studies(params)]
        urls = [u for s in studies if s for u in study_series(client, s)]
        if not urls:
            raise DicomWebError(f"{client.server}: the query {query or 'ModalitiesInStudy=SM'!r} "
                                "finds no slide-microscopy series")
        return urls
    ref = parse_url(text)
    if ref.series is not None:
        return [ref.url]
    urls = study_series(DicomWebClient(ref.root), ref.study)
    if not urls:
        raise DicomWebError(f"{ref.where()}: the study holds no slide-microscopy VOLUME series")
    return urls


def url_stem(text: str) -> str:
    """The output name of a DICOMweb slide URL: its series (or study) UID.

    Examples
    --------
    >>> url_stem("http://h/dicom-web/studies/1.2/series/1.2.3")
    '1.2.3'
    """
    ref = parse_url(text)
    return ref.series or ref.study


def list_slides(root: str, params: dict | None = None) -> list[dict[str, str]]:
    """The slide-microscopy series of a server (QIDO-RS series search, ``Modality=SM``
    plus ``params``): one dict each with ``patient``, ``study``, ``series`` (descriptions
    or UIDs) and ``url`` (the series URL), sorted by patient, study and series."""
    client = DicomWebClient(root)
    query = {"Modality": "SM", "includefield": "00100020,00081030,0008103E,00200011"}
    query.update(params or {})
    rows = client.json("series", what="search for slide-microscopy series", params=query)
    out = []
    for r in rows:
        study, series = str(value(r, "0020000D", "")), str(value(r, "0020000E", ""))
        if not (study and series and re.fullmatch(_UID, study) and re.fullmatch(_UID, series)):
            continue
        out.append({
            "patient": str(value(r, "00100020", "") or ""),
            "study": str(value(r, "00081030", "") or study),
            "series": str(value(r, "0008103E", "") or series),
            "url": f"{client.root}/studies/{study}/series/{series}",
        })
    return sorted(out, key=lambda d: (d["patient"], d["study"], d["series"], d["url"]))
