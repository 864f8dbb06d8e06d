"""Client of the secret-zero broker.

``broker login`` proves the machine's cloud identity to the broker, receives a
response-wrapped AppRole role ID and secret ID, checks and unwraps them, and
hands the credentials on (files, a token sink, or an exec'd process).
"""

__version__ = "0.1.0"
