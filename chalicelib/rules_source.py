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

Rules have an order: the file's top-level `serial` (absent: 0). The broker never applies
rules whose serial is below the highest it has applied from this source, nor other rules
under a serial it applied (serial above 0) with other content: an older file pushed
again, or an older S3 object version or SSM parameter version restored, is refused
(`RulesRollbackRefused`), and the rules in force stay. The highest serial applied, with
its content's SHA-256, is kept in the quarantine table (`rules#high-water#SOURCE`), so a
cold start or another Lambda instance refuses the rollback too; at start a refused
rollback stops the start. Without a quarantine table the order holds within one process
only. `BROKER_RULES_ALLOW_SERIAL=N` (a setting of the function, which pushing rules
does not change) lets the rules of serial N in on purpose, logged as
`RulesRollbackForced`; the mark then is N. Every audit record names the serial and the
SHA-256 of the rules it was decided by.
"""

import logging
import threading
import time

from .errors import ConfigError, Unavailable
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


class RulesRollback(RulesError):
    """Rules older than the ones this broker applied: refused."""


class HighWater:
    """The highest rules serial applied from one source, with its content's SHA-256: one item
    of the quarantine table, shared by every Lambda instance and kept across cold starts."""

    def __init__(self, dynamodb, table, source):
        self._db, self._table = dynamodb, table
        self._key = {"pk": {"S": f"rules#high-water#{source}"}}

    def read(self):
        """(serial, sha256), or None before any rules were applied."""
        from .aws_calls import call

        item = call("quarantine store", self._db.get_item, TableName=self._table, Key=self._key,
                    ConsistentRead=True).get("Item")
        if not item:
            return None
        return int(item["serial"]["N"]), item.get("sha256", {}).get("S", "")

    def advance(self, serial, sha256):
        """Raise the mark to `serial`; False when another instance holds a higher one (or the same
        serial with other content) by now."""
        from .aws_calls import try_call

        _, refused = try_call(
            "quarantine store", ("ConditionalCheckFailedException",), self._db.put_item, TableName=self._table,
            Item=dict(self._key, serial={"N": str(serial)}, sha256={"S": sha256},
                      applied_at={"N": str(int(time.time()))}),
            # serial 0 (a file that gives none) may change content under the same serial
            ConditionExpression="attribute_not_exists(pk) OR serial < :s OR (serial = :s AND sha256 = :h)"
            if serial else "attribute_not_exists(pk) OR serial <= :s",
            ExpressionAttributeValues={":s": {"N": str(serial)}, **({":h": {"S": sha256}} if serial else {})})
        return refused is None

    def force(self, serial, sha256):
        from .aws_calls import call

        call("quarantine store", self._db.put_item, TableName=self._table,
             Item=dict(self._key, serial={"N": str(serial)}, sha256={"S": sha256},
                       applied_at={"N": str(int(time.time()))}, forced={"BOOL": True}))


class ProcessHighWater:
    """The mark without a table: this process's memory (the order holds until a cold start)."""

    def __init__(self):
        self._mark = None

    def read(self):
        return self._mark

    def advance(self, serial, sha256):
        if _older((serial, sha256), self._mark):
            return False
        self._mark = (serial, sha256)
        return True

    def force(self, serial, sha256):
        self._mark = (serial, sha256)


def _older(candidate, mark):
    """Does `candidate` (serial, sha256) go back behind `mark`? Below its serial, or other content
    under the same serial (serials above 0: 0 is a file that gives none)."""
    if mark is None:
        return False
    (serial, sha256), (high, high_sha256) = candidate, mark
    return serial < high or (serial == high and serial > 0 and sha256 != high_sha256)


class LiveRules:
    """The rules in force: behaves as the current RuleSet (`rules.decide(...)`), re-read
    from its source at most every `refresh` seconds. Validation is the policy engine's
    plus `check` (deployment checks, e.g. accounts without a reader role)."""

    def __init__(self, source, *, refresh, logger, check=lambda rules: [], clock=time.monotonic, high_water=None,
                 allow_serial=None):
        self._source = source
        self._refresh = refresh
        self._log = logger
        self._check = check
        self._clock = clock
        self._high_water = high_water if high_water is not None else ProcessHighWater()
        self._allow_serial = allow_serial  # BROKER_RULES_ALLOW_SERIAL: the one serial let in below the mark
        self._lock = threading.Lock()
        text, version = source.read()
        rules = self._validate(text)  # at start, a bad version stops the start
        self._admit(rules, version)  # ... and so does a rolled-back one
        self._current = rules
        self._version = version
        self._checked_at = clock()

    @property
    def version(self):
        return self._version

    def stamp(self):
        """(serial, sha256) of the rules in force, for the audit record of a decision."""
        current = self.current()
        return current.serial, current.sha256

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
        try:
            self._admit(rules, version)
        except RulesRollback as e:
            self._emit("RulesRollbackRefused", "older rules refused; the rules in force stay",
                       version=version, serial=rules.serial, sha256=rules.sha256,
                       serial_in_force=self._current.serial, problem=str(e))
            self._version = version
            return
        except Unavailable as e:  # the mark can't be read or raised: nothing changes until it can
            self._emit("RulesSourceUnavailable", "rules order unavailable; the last good rules stay in force",
                       version=version, problem=e.detail)
            return
        self._current, self._version = rules, version
        log(self._log, logging.INFO, "rules reloaded", source=self._source.describe(), version=version,
            rules=len(rules.rules), serial=rules.serial, sha256=rules.sha256)

    def _admit(self, rules, version):
        """Let `rules` in unless they go back behind the highest serial applied (RulesRollback);
        raise the mark to theirs. Unavailable when the mark can't be read or written."""
        candidate = (rules.serial, rules.sha256)
        for _ in range(3):  # another instance may raise the mark between our read and our write
            mark = self._high_water.read()
            if _older(candidate, mark):
                if self._allow_serial is not None and rules.serial == self._allow_serial:
                    self._high_water.force(*candidate)
                    self._emit("RulesRollbackForced", "older rules applied: BROKER_RULES_ALLOW_SERIAL lets them in",
                               version=version, serial=rules.serial, sha256=rules.sha256, serial_before=mark[0],
                               sha256_before=mark[1], level=logging.WARNING)
                    return
                if rules.serial < mark[0]:
                    why = f"serial {rules.serial} is below {mark[0]}, the highest this broker applied"
                else:
                    why = f"serial {rules.serial} was applied with other content (sha256 {mark[1][:16]}...)"
                raise RulesRollback(f"{self._source.describe()}: {why}: give the rules a higher serial, or set "
                                    f"BROKER_RULES_ALLOW_SERIAL={rules.serial} to go back on purpose")
            if mark == candidate or self._high_water.advance(*candidate):
                return
        raise Unavailable("the rules order could not be recorded", backend="quarantine store",
                          detail="the high-water mark kept changing")

    def _emit(self, metric, event, level=logging.ERROR, **fields):
        log(self._log, level, event, source=self._source.describe(), **fields, **{metric: 1, "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": METRICS_NAMESPACE, "Dimensions": [[]],
                                   "Metrics": [{"Name": metric, "Unit": "Count"}]}]}})
