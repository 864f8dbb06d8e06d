"""Where the rules come from, and how they change without a redeploy.

`BROKER_RULES_SOURCE` names one of:
- `file:PATH` (the default: the rules file packaged with the function, BROKER_RULES_FILE);
- `s3://BUCKET/KEY` (a versioned S3 object);
- `ssm:NAME` (an SSM parameter, e.g. `ssm:/secret-zero-broker/prod/rules`).

The rules are loaded and validated at start (a bad start fails loudly, as before)
and read again at most every `BROKER_RULES_REFRESH_SECONDS` (60) on the request
path. A new version that fails validation is refused: the last good rules stay in
force, and a log line and a `RulesRejected` metric say so. An unreachable source
keeps the last good rules too (`RulesSourceUnavailable`).
"""

import logging
import threading
import time

from .errors import ConfigError
from .jsonlog import METRICS_NAMESPACE, log
from .policy import RulesError, parse_rules

MAX_RULES_BYTES = 256 * 1024


def parse_source(value, rules_file):
    """(kind, location) from BROKER_RULES_SOURCE; ConfigError naming the variable."""
    if not value:
        return "file", rules_file
    if value.startswith("file:"):
        return "file", value[len("file:"):]
    if value.startswith("s3://"):
        bucket, _, key = value[len("s3://"):].partition("/")
        if bucket and key:
            return "s3", (bucket, key)
    if value.startswith("ssm:") and len(value) > len("ssm:"):
        return "ssm", value[len("ssm:"):]
    raise ConfigError(f"BROKER_RULES_SOURCE must be file:PATH, s3://BUCKET/KEY or ssm:NAME, got {value!r}")


class RulesSource:
    """Reads the rules text and its version from a file, S3 or SSM."""

    def __init__(self, kind, location, make_aws_client=None):
        self.kind, self.location = kind, location
        self._make = make_aws_client
        self._client = None

    def describe(self):
        if self.kind == "s3":
            return f"s3://{self.location[0]}/{self.location[1]}"
        return f"{self.kind}:{self.location}"

    def read(self, known_version=None):
        """(text, version), or (None, version) when the version is the one already held."""
        if self.kind == "file":
            with open(self.location, "rb") as f:
                data = f.read(MAX_RULES_BYTES + 1)
            return _text(data, self.describe()), None
        from .aws_calls import call, try_call

        if self.kind == "s3":
            if self._client is None:
                self._client = self._make("s3")
            bucket, key = self.location
            kwargs = {"IfNoneMatch": known_version} if known_version else {}
            answer, not_modified = try_call("rules source", ("304", "NotModified"), self._client.get_object,
                                            Bucket=bucket, Key=key, **kwargs)
            if not_modified:
                return None, known_version
            data = answer["Body"].read(MAX_RULES_BYTES + 1)
            return _text(data, self.describe()), answer.get("ETag")
        if self._client is None:
            self._client = self._make("ssm")
        answer = call("rules source", self._client.get_parameter, Name=self.location)
        parameter = answer["Parameter"]
        version = str(parameter.get("Version"))
        if version == known_version:
            return None, version
        return _text(parameter["Value"].encode(), self.describe()), version


def _text(data, where):
    if len(data) > MAX_RULES_BYTES:
        raise RulesError(f"{where}: the rules are larger than {MAX_RULES_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RulesError(f"{where}: the rules are not UTF-8") from None


class LiveRules:
    """The rules in force: behaves as the current RuleSet (`rules.decide(...)`), re-read
    from its source at most every `refresh` seconds. Validation is the policy engine's
    plus `check` (deployment checks, e.g. accounts without a reader role)."""

    def __init__(self, source, *, refresh, logger, check=lambda rules: [], clock=time.monotonic):
        self._source = source
        self._refresh = refresh
        self._log = logger
        self._check = check
        self._clock = clock
        self._lock = threading.Lock()
        text, version = source.read()
        self._current = self._validate(text)  # at start, a bad version stops the start
        self._version = version
        self._checked_at = clock()

    @property
    def version(self):
        return self._version

    def current(self):
        if self._refresh and self._clock() - self._checked_at >= self._refresh and self._lock.acquire(blocking=False):
            try:
                self._reload()
            finally:
                self._checked_at = self._clock()
                self._lock.release()
        return self._current

    def recheck(self):
        """Read the source again at the next request (after a SnapStart restore the snapshot's
        rules may be older than `refresh`, and the monotonic clock does not show it)."""
        self._checked_at = float("-inf")

    def __getattr__(self, name):
        return getattr(self.current(), name)

    def _validate(self, text):
        rules = parse_rules(text, source=self._source.describe())
        problems = self._check(rules)
        if problems:
            raise RulesError("\n".join(problems))
        return rules

    def _reload(self):
        try:
            text, version = self._source.read(self._version)
        except Exception as e:  # the source is down: keep the last good rules
            self._emit("RulesSourceUnavailable", "rules source unavailable; the last good rules stay in force",
                       problem=getattr(e, "detail", type(e).__name__))
            return
        if text is None:
            return
        try:
            rules = self._validate(text)
        except RulesError as e:
            self._emit("RulesRejected", "new rules refused; the last good rules stay in force",
                       version=version, problem=str(e))
            self._version = version  # don't re-read a bad version on every refresh
            return
        self._current, self._version = rules, version
        log(self._log, logging.INFO, "rules reloaded", source=self._source.describe(), version=version,
            rules=len(rules.rules))

    def _emit(self, metric, event, **fields):
        log(self._log, logging.ERROR, event, source=self._source.describe(), **fields, **{metric: 1, "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": METRICS_NAMESPACE, "Dimensions": [[]],
                                   "Metrics": [{"Name": metric, "Unit": "Count"}]}]}})
