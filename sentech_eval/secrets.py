"""Credentials never travel through the command line or config: the overrides that would carry one are refused."""

from __future__ import annotations

import re

from sentech_eval.errors import ConfigError

# A command-line override that tries to carry a credential (it would be saved in .hydra/).
SECRET_OVERRIDE = re.compile(r"^[+~]*[\w.]*(api_?key|token|secret|password|authorization|bearer)\s*=", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A URL value carrying a credential: user:password@host, or ?api_key=… in the query string.
URL_CREDENTIAL = re.compile(r"://[^/@\s]*@|[?&][\w.-]*(api_?key|key|token|secret|password)=", re.IGNORECASE)


def refuse_secret_overrides(argv: list[str]) -> None:
    """Refuse ``backend.api_key=…``-style overrides before Hydra writes them to .hydra/overrides.yaml."""
    for arg in argv:
        if SECRET_OVERRIDE.match(arg) and not arg.split("=", 1)[0].endswith("api_key_env"):
            name = arg.split("=", 1)[0].lstrip("+~")
            raise ConfigError(
                f"Refusing the override '{name}=…': keys never go on the command line or in config (Hydra would save it); "
                "export the key in the environment variable named by backend.api_key_env (default SENTECH_API_KEY)."
            )
        name, _, value = arg.partition("=")
        if name.endswith("api_key_env") and value and not ENV_NAME.match(value.strip("'\"")):
            raise ConfigError(
                f"Refusing the override '{name.lstrip('+~')}=…': it must be the NAME of an environment variable "
                "(like SENTECH_API_KEY), not the key itself; export the key in that variable."
            )
        if "=" in arg and URL_CREDENTIAL.search(arg.split("=", 1)[1]):
            name = arg.split("=", 1)[0].lstrip("+~")
            raise ConfigError(
                f"Refusing the override '{name}=…': the URL carries a credential (user:password@ or a key in the query "
                "string) and Hydra would save it; export the key in the environment variable named by "
                "backend.api_key_env (default SENTECH_API_KEY)."
            )
