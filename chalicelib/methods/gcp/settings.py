"""The GCP method's settings. Without BROKER_GCP_AUDIENCE the method is off (None)."""


from dataclasses import dataclass

from ...config import env_number, env_url, env_value


@dataclass(frozen=True)
class GcpSettings:
    audience: str
    certs_url: str
    compute_url: str
    max_token_age: int

    @classmethod
    def from_env(cls, env):
        audience = env_value(env, "BROKER_GCP_AUDIENCE")
        if audience is None:
            return None
        return cls(
            audience=audience,
            certs_url=env_url(env, "BROKER_GCP_CERTS_URL") or "https://www.googleapis.com/oauth2/v1/certs",
            compute_url=env_url(env, "BROKER_GCP_COMPUTE_URL") or "https://compute.googleapis.com",
            max_token_age=int(env_number(env, "BROKER_GCP_MAX_TOKEN_AGE", 300, low=30, high=3600)),
        )
