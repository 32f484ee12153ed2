"""Redact secrets from URIs before they reach a response or a log line."""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "***"
# Query parameters that commonly carry credentials (pre-signed URLs, tokens, API keys).
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|pwd|key|signature|sig|credential|auth|session)", re.I
)
# user:password@ anywhere in free text (e.g. inside an exception message).
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.I)


def redact_uri(uri: str) -> str:
    """``uri`` with any user name/password and secret-looking query values replaced by ``***``."""
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError:
        return redact_text(uri)
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parsed.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{key}={REDACTED if _SECRET_KEY.search(key) else value}" for key, value in pairs
        )
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, parsed.fragment))


def redact_text(text: str) -> str:
    """Free text with ``scheme://user:password@`` credentials and secret query values redacted."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return re.sub(
        r"(?P<key>[?&][^=&\s]*(?:token|secret|password|key|signature|sig|auth)[^=&\s]*)=[^&\s]+",
        lambda m: f"{m.group('key')}={REDACTED}",
        text,
        flags=re.I,
    )
