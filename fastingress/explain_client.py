"""``fastingress explain``'s I/O: get an Explanation from manifests (translated here, with the
code standalone mode uses) or from a running instance's admin port (``/explain``), and
print it.  ``fastingress.explain`` does the explaining and stays pure."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import msgspec

from fastingress.errors import ConfigError
from fastingress.explain import ExplainError, ExplainRequest, Explanation, explain, render_text, request_query
from fastingress.settings import ExplainSettings, translate_options

ADMIN_TIMEOUT = 10.0
MAX_ANSWER = 16 * 1024 * 1024


def _request(settings: ExplainSettings) -> ExplainRequest:
    return ExplainRequest(settings.url, settings.headers, settings.client_ip, settings.method)


def from_manifests(settings: ExplainSettings) -> Explanation:
    from fastingress.manifests import load_manifests
    from fastingress.translate import translate

    objects, file_diagnostics = load_manifests(list(settings.manifests))
    result = translate(objects, translate_options(settings.translation))
    diagnostics = (*file_diagnostics, *result.diagnostics)
    try:
        return explain(
            result.snapshot, _request(settings), https_port=settings.https_port, diagnostics=diagnostics
        )
    except ExplainError as exc:
        raise ConfigError(str(exc)) from None


def from_admin(settings: ExplainSettings) -> Explanation:
    assert settings.admin is not None
    url = settings.admin.rstrip("/") + "/explain?" + request_query(_request(settings))
    try:
        with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as answer:
            body = answer.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        text = exc.read(4096).decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(f"{settings.admin}: {text[-1] if text else exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach the admin port at {settings.admin}: {reason}") from None
    try:
        return msgspec.json.decode(body, type=Explanation)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{settings.admin}: not an /explain answer ({exc})") from None


def run_explain(settings: ExplainSettings) -> int:
    explanation = from_admin(settings) if settings.admin is not None else from_manifests(settings)
    if settings.output == "json":
        sys.stdout.buffer.write(msgspec.json.encode(explanation) + b"\n")
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(render_text(explanation))
    return 0


__all__ = ["from_admin", "from_manifests", "run_explain"]
