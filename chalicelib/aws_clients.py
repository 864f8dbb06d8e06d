"""botocore clients with less CPU per call (issue 14, item 3), each setting measured.

Same signature as ``backends.aws_client_factory``: ``aws_client_factory(settings)``
returns ``make(service, region=None, **credentials)`` (credentials: a reader role's
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``). What differs, all through options botocore
offers (figures per setting: docs/performance.md, benchmark 8):

- one botocore session per process, shared by every factory: its loader caches
  the service models and endpoint rules, so a second EC2 region or a rebuilt
  service does not load them again; its models are the trimmed ones
  (``use_trimmed_models``, deploy/botocore_models.py);
- a fixed User-Agent (``Config(user_agent=...)``): botocore otherwise rebuilds the
  full user-agent string (platform, features, config metadata) twice per call;
- no client-side parameter validation (``parameter_validation=False``): the broker
  builds every request from fixed shapes, and AWS validates them anyway;
- response timestamps kept as the ISO-8601 strings AWS sends (the session's
  parser factory, ``timestamp_parser``): the broker reads no timestamp from
  EC2/IAM answers, and parsing each with dateutil is the costliest part of
  DescribeInstances' answer. Code that needs a datetime must parse it itself.

Timeouts and retries are those of ``backends.aws_client_factory``.
"""

import os
import platform
import threading

# The trimmed service models (deploy/botocore_models.py): only the operations the broker calls.
TRIMMED_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "botocore_models")

_session = None
_session_lock = threading.Lock()


def _keep_timestamp(value):
    return value


def use_trimmed_models(session):
    """Put the trimmed service models first on the session's data path (as AWS_DATA_PATH
    would), before any client is made: EC2's model is then 44 kB instead of 3.7 MB. The
    endpoint rule sets and every other file still come from botocore's own data."""
    paths = session.get_component("data_loader").search_paths
    if TRIMMED_MODELS not in paths:
        paths.insert(0, TRIMMED_MODELS)
    return session


def shared_session(raw_timestamps=True):
    """The process's botocore session (built once)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                import botocore.session

                session = use_trimmed_models(botocore.session.get_session())
                if raw_timestamps:
                    session.get_component("response_parser_factory").set_parser_defaults(
                        timestamp_parser=_keep_timestamp)
                _session = session
    return _session


def user_agent():
    import botocore

    return f"secret-zero-broker botocore/{botocore.__version__} Python/{platform.python_version()}"


def client_configs(fixed_user_agent=True, validate=False):
    """(the default config, DynamoDB's faster-failing config)."""
    import botocore.config

    config = botocore.config.Config(
        connect_timeout=2, read_timeout=5,
        retries={"mode": "standard", "max_attempts": 2},
        max_pool_connections=20,
        parameter_validation=validate,
        **({"user_agent": user_agent()} if fixed_user_agent else {}),
    )
    # DynamoDB answers in milliseconds; a hanging table must not hold a request for
    # 2 attempts x 5 s on each of its calls (see backends.aws_client_factory).
    return config, config.merge(botocore.config.Config(connect_timeout=1, read_timeout=2))


def tuned_factory(settings, *, session=None, fixed_user_agent=True, validate=False):
    """``aws_client_factory`` with each setting switchable, for the benchmark that measures them."""
    session = session or shared_session()
    config, fast = client_configs(fixed_user_agent=fixed_user_agent, validate=validate)

    def make(service, region=None, **credentials):
        """A client of the broker's own credentials, or of the given ones (a reader role's)."""
        return session.create_client(service, region_name=region or settings.aws_region,
                                     endpoint_url=settings.aws_endpoint_url,
                                     config=fast if service == "dynamodb" else config, **credentials)

    return make


def aws_client_factory(settings):
    """``make(service, region=None, **credentials)`` -> a botocore client; drop-in for
    ``backends.aws_client_factory``."""
    return tuned_factory(settings)
