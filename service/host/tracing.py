"""OpenTelemetry spans only when something reads them.

BentoML wraps every request in OpenTelemetry's ASGI middleware, which starts a *recording* span for
the request and one more for each ASGI message (every body chunk received, the response start and
body sent), even with no exporter configured: BentoML's sampler records and then drops them. On a
small image that bookkeeping is 4.5 % of a worker's CPU per request (interleaved A/B, see the
README's "HTTP service"). imgcls therefore turns the spans off unless something consumes them:

- BentoML tracing is configured (a ``tracing`` section in the YAML file ``BENTOML_CONFIG`` names,
  or a ``tracing`` key in ``BENTOML_CONFIG_OPTIONS``): BentoML's configuration is left untouched,
  so its exporters (Zipkin, Jaeger, OTLP) get every span as before;
- the access log is on (``--access-log``, or an ``access`` logging entry in BentoML's
  configuration): its lines carry the trace and span ids, a client's ``traceparent`` included,
  which is how logs are matched to a caller's trace.

Otherwise every URL is excluded from the middleware (its documented ``excluded_urls`` setting).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("imgcls.service.tracing")
EVERY_URL = [".*"]  # OpenTelemetry's ExcludeList searches each request URL with these regexes
READERS = ("tracing", "access")  # BentoML configuration keys whose presence means spans are read
OPTION_READER = re.compile(r"(?:^|[.\s])(?:tracing|access)\.")  # as a dotted key, not access_control_*


def bentoml_config_reads_spans(environ: Mapping[str, str]) -> bool:
    """True when the user's BentoML configuration (file or options) mentions tracing or the access log."""
    options = environ.get("BENTOML_CONFIG_OPTIONS", "")  # e.g. "services.imgcls.logging.access.enabled=true"
    if OPTION_READER.search(options):
        return True
    path = environ.get("BENTOML_CONFIG", "")
    if not path:
        return False
    import yaml  # only with a configuration file: imgcls serve's start does not pay for it otherwise

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        log.warning("BENTOML_CONFIG %s unreadable (%s): leaving BentoML's tracing as configured", path, error)
        return True  # BentoML itself reports the file; we do not second-guess a configuration we cannot read
    return _mentions_reader(document)


def _mentions_reader(node: Any) -> bool:
    if isinstance(node, dict):
        return any(key in READERS or _mentions_reader(value) for key, value in node.items())
    if isinstance(node, list):
        return any(_mentions_reader(value) for value in node)
    return False


def spans_wanted(access_log: bool, environ: Mapping[str, str]) -> bool:
    return access_log or bentoml_config_reads_spans(environ)


def service_settings(access_log: bool, environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``tracing`` entry of ``@bentoml.service``: empty (BentoML's own) or every URL excluded."""
    return {} if spans_wanted(access_log, environ) else {"excluded_urls": list(EVERY_URL)}
