"""How a tool reaches the controller.

Credentials, region and endpoint are found the way AWS tools find them (:func:`resolve_settings`):

- credentials: ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), unless a
  profile was named with ``--profile``; then the profile (``--profile``, ``AWS_PROFILE``, else
  ``default``) in the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, default
  ``~/.aws/credentials``), then in the config file (``AWS_CONFIG_FILE``, default ``~/.aws/config``);
- region: ``--region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``,
  ``us-east-1``;
- endpoint: ``-U/--url``, ``AWS_ENDPOINT_URL_IAM`` / ``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``,
  the profile's ``endpoint_url`` (the last three unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``).

A :class:`Client` signs each call with :func:`controller.sigv4.sign`, sends it with ``requests`` and
turns the answer into data, or an AWS error into a :class:`ServiceError`. With a debug stream it
shows the exchange there, signature and secrets masked (:func:`mask_header`, :func:`mask_text`).
"""

from __future__ import annotations

import configparser
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests

from controller import sigv4
from controller.tools.errors import ServiceError, ToolError
from controller.tools.xmldata import parse_error, parse_xml, result_data

VERSIONS = {"iam": "2010-05-08", "sts": "2011-06-15", "ec2": "2016-11-15"}
DEFAULT_REGION = "us-east-1"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
#: Seconds to connect, then to wait for the answer.
TIMEOUT = (10, 60)
MASK = "****"

#: Parameter, element and JSON key names whose values --debug never shows.
SECRET_NAMES = (
    "KeyMaterial",  # CreateKeyPair's private key
    "SecretAccessKey",
    "SessionToken",
    "SecurityToken",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
)
_SECRETS = "|".join(re.escape(name) for name in SECRET_NAMES)
_XML_SECRET = re.compile(rf"(<(?:\w+:)?({_SECRETS})(?:\s[^>]*)?>)[^<]*(</)", re.IGNORECASE)
_FORM_SECRET = re.compile(rf"((?:^|[&?])(?:{_SECRETS})=)[^&\s]*", re.IGNORECASE)
_JSON_SECRET = re.compile(rf"(\"(?:{_SECRETS})\"\s*:\s*\")(?:[^\"\\]|\\.)*(\")", re.IGNORECASE)
_SIGNATURE = re.compile(r"(Signature=)[^,\s]*")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


@dataclass(frozen=True)
class Credentials:
    """An access key, where it was found; the secret and token stay out of repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything a client needs to call one service."""

    service: str
    endpoint: str
    region: str
    credentials: Credentials


ReadText = Callable[[Path], str | None]


def read_text(path: Path) -> str | None:
    """A file's text, or None if there is no such file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ToolError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ToolError(f"cannot read {path}: it is not UTF-8 text") from None


# Resolution


def resolve_settings(
    service: str,
    *,
    env: Mapping[str, str],
    url: str | None = None,
    profile: str | None = None,
    region: str | None = None,
    read: ReadText = read_text,
) -> Settings:
    """Where and as whom to call ``service`` ("iam" or "ec2"), from flags, environment and the
    AWS shared files, in AWS's order; a ToolError naming what to set if something is missing."""
    files = _SharedFiles(env, read)
    named = profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    profile_name = named or "default"
    config = files.config_profile(profile_name) or {}
    endpoint = _endpoint(service, url, env, config, files, profile_name)
    credentials = _credentials(env, files, profile_name, explicit=profile is not None, named=named)
    chosen_region = (
        region
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or config.get("region")
        or DEFAULT_REGION
    )
    return Settings(service, endpoint, chosen_region, credentials)


class _SharedFiles:
    """The shared credentials and config files, each read and parsed once, when first needed."""

    def __init__(self, env: Mapping[str, str], read: ReadText) -> None:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
        self.credentials_path = _expand(
            env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", home
        )
        self.config_path = _expand(env.get("AWS_CONFIG_FILE") or "~/.aws/config", home)
        self._read = read
        self._parsed: dict[Path, dict[str, dict[str, str]]] = {}

    def credentials_profile(self, name: str) -> dict[str, str] | None:
        return self._sections(self.credentials_path).get(name)

    def config_profile(self, name: str) -> dict[str, str] | None:
        sections = self._sections(self.config_path)
        if name == "default" and "default" in sections:
            return sections["default"]
        return sections.get(f"profile {name}")

    def _sections(self, path: Path) -> dict[str, dict[str, str]]:
        if path not in self._parsed:
            self._parsed[path] = _parse_ini(path, self._read(path))
        return self._parsed[path]


def _expand(path: str, home: Path) -> Path:
    if path == "~" or path.startswith("~/"):
        return home / path[2:]
    return Path(path)


def _parse_ini(path: Path, text: str | None) -> dict[str, dict[str, str]]:
    if text is None:
        return {}
    # No interpolation ('%' may be in a secret) and no DEFAULT section ([default] is a profile).
    parser = configparser.ConfigParser(interpolation=None, default_section="\0")
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        first_line = str(error).strip().splitlines()[0]
        raise ToolError(f"cannot parse {path}: {first_line}") from None
    return {
        name: {key: value.strip() for key, value in parser[name].items()}
        for name in parser.sections()
    }


def _credentials(
    env: Mapping[str, str],
    files: _SharedFiles,
    profile: str,
    *,
    explicit: bool,
    named: str | None,
) -> Credentials:
    if not explicit:
        key_id = env.get("AWS_ACCESS_KEY_ID")
        secret = env.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
            return Credentials(key_id, secret, token, "environment")
        if key_id or secret:
            present, missing = (
                ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                if key_id
                else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            )
            raise ToolError(f"{present} is set but {missing} is not: set both")
    places = (
        (files.credentials_profile(profile), f"{files.credentials_path} [{profile}]"),
        (files.config_profile(profile), f"{files.config_path} [profile {profile}]"),
    )
    for section, where in places:
        if section is None:
            continue
        key_id = section.get("aws_access_key_id")
        secret = section.get("aws_secret_access_key")
        if key_id and secret:
            token = section.get("aws_session_token") or section.get("aws_security_token") or None
            return Credentials(key_id, secret, token, where)
        if key_id or secret:
            raise ToolError(f"{where} needs both aws_access_key_id and aws_secret_access_key")
    if named and all(section is None for section, _ in places):
        raise ToolError(
            f"profile '{profile}' is in neither {files.credentials_path} "
            f"(AWS_SHARED_CREDENTIALS_FILE) nor {files.config_path} (AWS_CONFIG_FILE)"
        )
    raise ToolError(
        "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile "
        f"(AWS_PROFILE or --profile) of {files.credentials_path} (AWS_SHARED_CREDENTIALS_FILE)"
    )


def _endpoint(
    service: str,
    url: str | None,
    env: Mapping[str, str],
    config: Mapping[str, str],
    files: _SharedFiles,
    profile: str,
) -> str:
    service_variable = f"AWS_ENDPOINT_URL_{service.upper()}"
    if url:
        return checked_url(url, "-U/--url")
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() != "true":
        for variable in (service_variable, "AWS_ENDPOINT_URL"):
            if env.get(variable):
                return checked_url(env[variable], variable)
        if config.get("endpoint_url"):
            return checked_url(
                config["endpoint_url"],
                f"endpoint_url of [profile {profile}] in {files.config_path}",
            )
    raise ToolError(
        f"no endpoint: set AWS_ENDPOINT_URL (or {service_variable}) to the controller's URL, "
        "e.g. http://127.0.0.1:8773, or pass -U/--url"
    )


def checked_url(url: str, source: str) -> str:
    """``url`` if it is an http(s) URL with a host and no query; a ToolError naming ``source``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ToolError(f"{source} must be an http(s) URL like http://127.0.0.1:8773, not {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


# Masking


def mask_header(name: str, value: str) -> str:
    """A header value fit to show: the signature in Authorization and the token masked."""
    lowered = name.lower()
    if lowered == "authorization":
        return _SIGNATURE.sub(rf"\g<1>{MASK}", value)
    if lowered in ("x-amz-security-token", "cookie", "set-cookie", "proxy-authorization"):
        return MASK
    return value


def mask_text(text: str) -> str:
    """A request or response body fit to show: the values of :data:`SECRET_NAMES` masked, as
    XML elements, form parameters or JSON members."""
    text = _XML_SECRET.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _FORM_SECRET.sub(rf"\g<1>{MASK}", text)
    return _JSON_SECRET.sub(rf"\g<1>{MASK}\g<2>", text)


# Calls


def utc_now() -> datetime:
    return datetime.now(UTC)


def form_body(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Query parameters as a form body, percent-encoded as botocore does (``%20`` for a space)."""
    return urlencode(list(pairs), quote_via=quote).encode("ascii")


def host_header(endpoint: str) -> str:
    """The Host header for an endpoint: host and port, the port left out when it is the default."""
    parts = urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    default_port = {"http": 80, "https": 443}[parts.scheme]
    if parts.port == default_port:
        host = host.rpartition(":")[0]
    return host


class Client:
    """Calls one service's Query API as the settings say, one signed POST per call."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utc_now,
        debug: TextIO | None = None,
        user_agent: str = "rolecall-tools",
    ) -> None:
        self.settings = settings
        self._session = session or requests.Session()
        self._clock = clock
        self._debug = debug
        self._user_agent = user_agent

    def call(self, action: str, params: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        """Call ``action`` with ``params``; its result as data (see :mod:`.xmldata`), or a
        ServiceError with the AWS code, or a ToolError if the endpoint cannot be reached."""
        service = self.settings.service
        body = form_body([("Action", action), ("Version", VERSIONS[service]), *params])
        prepared = self.prepare(body)
        if self._debug is not None:
            self._show_request(prepared)
        try:
            response = self._session.send(prepared, timeout=TIMEOUT, allow_redirects=False)
        except requests.RequestException as error:
            raise ToolError(f"cannot reach {self.settings.endpoint}: {_reason(error)}") from None
        if self._debug is not None:
            self._show_response(response)
        return self._result(action, response)

    def for_service(self, service: str) -> Client:
        """A client of ``service`` at the same endpoint, as the same caller: RoleCall answers
        IAM, STS and EC2 on one endpoint (the credential scope names the service)."""
        return Client(
            dataclasses.replace(self.settings, service=service),
            session=self._session,
            clock=self._clock,
            debug=self._debug,
            user_agent=self._user_agent,
        )

    def prepare(self, body: bytes) -> requests.PreparedRequest:
        """The signed request for a form body, as it will go on the wire."""
        endpoint = self.settings.endpoint
        credentials = self.settings.credentials
        unsigned = sigv4.HttpRequest(
            "POST",
            urlsplit(endpoint).path or "/",
            "",
            (("Host", host_header(endpoint)), ("Content-Type", FORM)),
            body,
        )
        signed = sigv4.sign(
            unsigned,
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            region=self.settings.region,
            service=self.settings.service,
            now=self._clock(),
            security_token=credentials.session_token,
        )
        headers = {"User-Agent": self._user_agent, **dict(signed.headers)}
        request = requests.Request("POST", endpoint, headers=headers, data=body)
        return self._session.prepare_request(request)

    def _result(self, action: str, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if 200 <= status < 300:
            root = parse_xml(response.content)
            if root is None:
                raise ToolError(
                    f"{self.settings.endpoint} answered {action} with HTTP {status} but no XML"
                )
            return result_data(root, self.settings.service)
        error = parse_error(response.content)
        if error is not None:
            code, message = error
            raise ServiceError(code, message, status)
        reason = f" {response.reason}" if response.reason else ""
        raise ToolError(f"{self.settings.endpoint} answered {action} with HTTP {status}{reason}")

    def _show_request(self, prepared: requests.PreparedRequest) -> None:
        lines = [f"{prepared.method} {prepared.url}"]
        lines += [
            f"{name}: {mask_header(name, _text(value))}" for name, value in prepared.headers.items()
        ]
        body = prepared.body or b""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        self._show(">", [*lines, "", *mask_text(text).splitlines()])

    def _show_response(self, response: requests.Response) -> None:
        lines = [f"HTTP {response.status_code} {response.reason or ''}".rstrip()]
        lines += [f"{name}: {mask_header(name, value)}" for name, value in response.headers.items()]
        text = response.content.decode("utf-8", "replace")
        self._show("<", [*lines, "", *mask_text(text).splitlines()])

    def _show(self, marker: str, lines: list[str]) -> None:
        assert self._debug is not None
        for line in lines:
            print(f"{marker} {line}".rstrip(), file=self._debug)
        self._debug.flush()


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _reason(error: requests.RequestException) -> str:
    """A short reason for a failed connection: requests nests the useful part deep inside."""
    text = str(error)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip().lower()
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS handshake failed"
    return type(error).__name__
