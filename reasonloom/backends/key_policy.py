"""Which environment variables a recipe may turn into bearer keys, and where they may go.

A recipe names a variable (`api_key_env`), never a key; the person who runs reasonloom decides
which names are keys at all and which hosts may receive them in the clear:

- a name is a key if it ends in `_API_KEY` or is listed in $REASONLOOM_ALLOWED_KEY_ENVS
  (comma-separated); `AWS_SECRET_ACCESS_KEY`, `HOME` ... are not, unless listed;
- the server's own key variable ($REASONLOOM_API_KEY) is never one, listed or not;
- a key travels over https, or over http to a loopback address; any other http host must be
  listed in $REASONLOOM_PLAINTEXT_KEY_HOSTS (comma-separated host names).

Both checks run when a recipe is validated (one located line), and again when a backend reads
the key, so no path from YAML to a request skips them.
"""
from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

SERVER_KEY_ENV = "REASONLOOM_API_KEY"
ALLOWED_ENVS_VAR = "REASONLOOM_ALLOWED_KEY_ENVS"
PLAINTEXT_HOSTS_VAR = "REASONLOOM_PLAINTEXT_KEY_HOSTS"


class KeyPolicyError(ValueError):
    """A recipe asks for a variable that is not a key, or sends a key where it must not go."""


def _listed(var: str) -> set[str]:
    return {part.strip() for part in os.environ.get(var, "").split(",") if part.strip()}


def name_problem(env_name: str) -> str | None:
    """Why `env_name` may not be read as a key, or None when it may."""
    if env_name == SERVER_KEY_ENV:
        return f"{env_name} is the server's own key and is never sent to a model"
    if env_name.endswith("_API_KEY") or env_name in _listed(ALLOWED_ENVS_VAR):
        return None
    return (f"{env_name} is not an allowed key variable (names ending in _API_KEY, or listed "
            f"in ${ALLOWED_ENVS_VAR})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_problem(base_url: str | None) -> str | None:
    """Why a key may not be sent to `base_url`, or None (None = the provider's own https URL)."""
    if base_url is None:
        return None
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme == "https" or is_loopback(host) or host in _listed(PLAINTEXT_HOSTS_VAR):
        return None
    return (f"a key would travel unencrypted to {parts.scheme}://{host}: use https, a "
            f"loopback address, or list the host in ${PLAINTEXT_HOSTS_VAR}")


def key_problem(env_name: str | None, base_url: str | None) -> str | None:
    if not env_name:
        return None
    return name_problem(env_name) or route_problem(base_url)


def read_key(env_name: str | None, base_url: str | None) -> str | None:
    """The key in `env_name` for a request to `base_url`; raises KeyPolicyError on a rule."""
    problem = key_problem(env_name, base_url)
    if problem:
        raise KeyPolicyError(f"api_key_env: {problem}")
    return os.environ.get(env_name) if env_name else None
