"""The one credential pattern: what a key looks like, where it may not go, and how it is blanked out.

- ``refuse_secret_overrides(argv)`` runs on every command-line override **before Hydra writes
  anything** (``.hydra/overrides.yaml``, ``hydra.yaml``, ``job_status.json``). An override is
  refused when its *name* is credential-like (``api_key``, ``X-Api-Key``, ``Authorization``,
  ``access_token`` … in any field, at any depth, also as a key inside a dict value), when its
  *value* has a key's shape (``sk-…``, ``Bearer …``, a JWT, a long mixed run of letters and digits),
  or when it holds the *value* of a credential environment variable (``SENTECH_API_KEY`` …) —
  checked raw, percent-decoded and base64-decoded, whatever the field name.
- ``url_credential(url)`` says why a URL carries a credential (``user:pass@``, a credential-named
  query parameter, a key-shaped value); harmless parameters (``?author=…``, ``?keyword=…``) pass;
  ``url_without_credentials(url)`` drops userinfo and query (the response cache keys on that).
- ``find_credentials(node)`` lists the config entries that look like credentials (names or values).
- ``Redactor(key)`` replaces the key, and any long prefix or suffix of it, in text a server controls.

This module imports nothing of ours but ``errors``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import html
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit, urlunsplit

from sentech_eval.errors import ConfigError

REDACTED = "[redacted]"
DEFAULT_KEY_ENV = "SENTECH_API_KEY"
FIX = (
    "keys never go on the command line or in config (Hydra would save them): export the key in the "
    f"environment variable named by backend.api_key_env (default {DEFAULT_KEY_ENV})"
)

# Words that make a field name a credential ("api_key", "X-Api-Key", "accessToken", "Authorization").
CREDENTIAL_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "accesstoken",
        "secret",
        "password",
        "passwd",
        "auth",
        "authorization",
        "bearer",
        "credential",
        "credentials",
        "cookie",
        "signature",
        "jwt",
        "sessionid",
        "privatekey",
        "clientsecret",
    }
)
# A field whose last word is one of these names the *place* a key lives, not the key (api_key_env).
REFERENCE_WORDS = frozenset({"env", "var", "variable", "file", "path"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Key shapes: vendor prefixes, auth schemes, JWTs, and a long unbroken run mixing letters and digits.
KEY_SHAPE = re.compile(
    r"(?<![A-Za-z0-9])(?:sk|pk|rk)[-_][A-Za-z0-9_-]{16,}"
    r"|(?<![A-Za-z0-9])(?:gh[pousr]_|github_pat_|hf_|glpat-|xox[abprs]-)[A-Za-z0-9_-]{16,}"
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{30,}"
    r"|(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?i:\b(?:bearer|basic|token)\s+(?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{12,})"
    r"|(?<![A-Za-z0-9])(?=[A-Za-z]*[0-9])(?=[0-9]*[A-Za-z])[A-Za-z0-9]{24,}(?![A-Za-z0-9])"
)
# name= or name: inside a value (a query string, a dict literal {Authorization: …}, a header line).
# (A placeholder value — "...", "…", "$VAR", "<key>" — is not a credential.)
# Found from the ':' / '=' back to the name (each name run is read once: linear in the value's length; a
# regex that tried every start of a long run of letters was quadratic). The value must show a letter or
# digit within its first 64 characters.
_ASSIGNMENT = re.compile(r"['\"]?\s*[:=](?!//)\s*['\"]?(?=[^\s'\",}&$<.…]{0,64}?[A-Za-z0-9])(?![$<])")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def assigned_names(text: str) -> list[str]:
    """The names set in ``text`` as ``name=value`` or ``name: value`` (a query string, a dict literal, a header
    line): 'a=1&api_key=x' -> ['a', 'api_key']. A name starts with a letter; 'http://' is no assignment."""
    names = []
    for match in _ASSIGNMENT.finditer(text):
        end = start = match.start()
        while start > 0 and text[start - 1] in _NAME_CHARS:
            start -= 1
        while start < end and not (text[start].isascii() and text[start].isalpha()):
            start += 1
        if start < end:
            names.append(text[start:end])
    return names


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
MIN_SECRET_CHARS = 8  # shorter values are not searched for (a test key like "k" is in every word)


def name_words(name: str) -> list[str]:
    """The lower-case words of a field name: 'X-Api-Key' -> ['x', 'api', 'key'], 'apiKey' -> ['api', 'key']."""
    return [w.lower() for w in _WORD.findall(name)]


def is_credential_name(name: str) -> bool:
    """True for a field name that holds a credential (``api_key``, ``headers.Authorization``, ``accessToken``).

    Counts (``max_tokens``), look-alikes (``author``, ``keyword``, ``top_k``) and names of the place a key
    lives (``api_key_env``) are not credentials.
    """
    for segment in re.split(r"[.\[\]/]", name):
        words = name_words(segment)
        if not words or words[-1] in REFERENCE_WORDS:
            continue
        joined = "".join(words)
        if any(w in CREDENTIAL_WORDS for w in words) or joined in CREDENTIAL_WORDS:
            return True
    return False


def is_reference_name(name: str) -> bool:
    """True for a field that names where a key lives (``api_key_env``): its value must be a variable name."""
    words = name_words(name.rsplit(".", 1)[-1])
    return len(words) > 1 and words[-1] in REFERENCE_WORDS and any(w in CREDENTIAL_WORDS for w in words[:-1])


def environment_secrets(extra_names: Iterable[str] = ()) -> list[str]:
    """Values of credential environment variables (``SENTECH_API_KEY``, ``*_TOKEN`` …) long enough to search for."""
    names = {DEFAULT_KEY_ENV, *extra_names}
    names.update(n for n in os.environ if is_credential_name(n))
    values = {os.environ.get(n, "").strip() for n in names}
    return sorted(v for v in values if len(v) >= MIN_SECRET_CHARS)


def _base64_decoded(text: str) -> Iterator[str]:
    for run in _BASE64_RUN.findall(text):
        core = run.rstrip("=")
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(core + "=" * (-len(core) % 4))
            except (binascii.Error, ValueError):
                continue
            decoded = raw.decode("latin-1")
            if sum(c.isprintable() for c in decoded) >= 0.9 * len(decoded):
                yield decoded


_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{1,3}|[/\\\"'bfnrt])")
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
_CHAR_REF = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def _unescape_backslashes(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        token = match.group(0)[1:]
        if token[0] in "uUx":
            code = int(token[1:], 16)
            return chr(code) if code <= 0x10FFFF else match.group(0)
        if token[0].isdigit():
            return chr(int(token, 8))
        return {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.get(token, token)

    return _ESCAPE.sub(one, text)


def escaped_views(text: str) -> list[str]:
    """What ``text`` may decode to, when it holds escapes (``\\u0073``, ``%73``, ``&#115;``), repeated up to
    three times; ``[]`` for text without any (the common case costs three searches)."""
    views: list[str] = []
    current = text
    for _ in range(3):
        decoded = current
        if "\\" in decoded and _ESCAPE.search(decoded):
            decoded = _unescape_backslashes(decoded)
        if "%" in decoded and _PERCENT.search(decoded):
            decoded = unquote(decoded)
        if "&" in decoded and _CHAR_REF.search(decoded):
            decoded = html.unescape(decoded)
        if decoded == current:
            break
        views.append(decoded)
        current = decoded
    return views


def decodings(text: str) -> list[str]:
    """``text`` as given and as it may decode: percent-encoding (repeated), backslash escapes, base64 runs."""
    views = [text]
    current = text
    for _ in range(3):
        decoded = unquote_plus(unquote(current))
        if decoded == current:
            break
        views.append(decoded)
        current = decoded
    if "\\" in text:
        views.append(text.replace("\\", ""))
    for view in list(views):
        views.extend(_base64_decoded(view))
    return views


def credential_problem(text: str, secrets: Iterable[str] = ()) -> str | None:
    """Why ``text`` (a value, any encoding) carries a credential, or None.

    Linear in the text's length, and worked out once per (text, secrets): the command line's check and the
    config's check of the same value share the answer."""
    return _credential_problem(text, tuple(secrets))


@functools.lru_cache(maxsize=4096)
def _credential_problem(text: str, secrets: tuple[str, ...]) -> str | None:
    for view in decodings(text):
        for secret in secrets:
            if secret in view:
                return "it holds the value of a credential environment variable"
        if KEY_SHAPE.search(view):
            return "its value has the shape of an API key"
        if "://" in view and re.search(r"://[^/?#\s@]+@", view):
            return "the URL carries a credential (user:password@)"
        for name in assigned_names(view):
            if is_credential_name(name) and not is_reference_name(name):
                return f"it sets the credential field {name!r}"
    return None


def url_credential(url: str, secrets: Iterable[str] = ()) -> str | None:
    """Why a URL carries a credential (userinfo, a credential-named query parameter, a key-shaped part), or None."""
    parts = urlsplit(unquote(url))
    if parts.username or parts.password:
        return "the URL carries a credential (user:password@)"
    for name, _value in parse_qsl(parts.query, keep_blank_values=True):
        if is_credential_name(name):
            return f"the URL's query parameter {name!r} carries a credential"
    problem = credential_problem(url, secrets)
    if problem is not None:
        return f"the URL carries a credential ({problem})"
    return None


def url_without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` and query string removed (e.g. so they never enter a cache key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _override_name(arg: str) -> tuple[str, str | None]:
    name, sep, value = arg.partition("=")
    if not sep:
        return "", None
    return name.lstrip("+~").strip(), value


def _key_env_names(argv: Iterable[str]) -> list[str]:
    names: list[str] = []
    for arg in argv:
        name, value = _override_name(arg)
        if value is not None and is_reference_name(name):
            names.extend(v.strip("'\" ") for v in value.strip("[]").split(","))
    return [n for n in names if ENV_NAME.fullmatch(n)]


def override_problem(arg: str, secrets: Iterable[str] = ()) -> str | None:
    """Why one command-line argument would carry a credential into Hydra's saved files, or None."""
    name, value = _override_name(arg)
    if value is None:
        return credential_problem(arg, secrets)
    if is_reference_name(name):
        for item in (v.strip("'\" ") for v in value.strip("[]").split(",")):
            if item and not ENV_NAME.fullmatch(item):
                return "it must be the NAME of an environment variable (like SENTECH_API_KEY), not the key itself"
            if item and (credential_problem(item, secrets) or _looks_random(item)):
                return "its value looks like a key, not the NAME of an environment variable (like SENTECH_API_KEY)"
        return None
    if is_credential_name(name):
        return f"{name.rsplit('.', 1)[-1]!r} is a credential field"
    return credential_problem(value, secrets) or credential_problem(name, secrets)


def _looks_random(value: str) -> bool:
    """A variable name is words in capitals (SENTECH_API_KEY); a key mixes lower case and digits at length."""
    return len(value) >= 16 and any(c.islower() for c in value) and any(c.isdigit() for c in value)


def shown_name(arg: str, secrets: Iterable[str] = ()) -> str:
    """The override's name for a message, unless the name itself would leak a key."""
    name, _ = _override_name(arg)
    if not name or credential_problem(name, secrets) is not None:
        return "an override"
    return f"the override '{name}=…'"


# An OmegaConf resolver that reads an environment variable: ${oc.env:NAME}, ${oc.env:'NAME',default}, ${env:NAME}.
_ENV_RESOLVER = re.compile(r"\$\{\s*(?:oc\.env|env)\s*:\s*(['\"]?)\s*((?:\$\{[^}]*\}|[^,}'\"\s])*)")


def key_env_names(argv: Iterable[str]) -> set[str]:
    """The variables that hold a key: ``backend.api_key_env`` (default SENTECH_API_KEY, and any set in ``argv``)
    and every credential-named variable of the environment (``OPENAI_API_KEY``, ``HF_TOKEN`` …)."""
    return {DEFAULT_KEY_ENV, *_key_env_names(argv), *(n for n in os.environ if is_credential_name(n))}


def interpolation_problem(value: str, key_envs: Iterable[str]) -> str | None:
    """Why a value's interpolation would read a key (``${oc.env:SENTECH_API_KEY}``), or None.

    Refused whether or not the variable is set: once resolved, Hydra writes the value into the run dir's
    name, ``.hydra/hydra.yaml``, results and messages. A variable name that is itself an interpolation
    (``${oc.env:${x}}``) is refused too: what it reads cannot be known before it is resolved.
    """
    if "${" not in value:
        return None
    names = {n.upper() for n in key_envs}
    for _quote, name in _ENV_RESOLVER.findall(value):
        name = name.strip()
        if "${" in name:
            return "it reads an environment variable whose name is itself an interpolation (${oc.env:${…}})"
        if name.upper() in names or is_credential_name(name):
            return f"it reads the key's environment variable {name} through an interpolation (${{oc.env:{name}}})"
    return None


def refuse_secret_overrides(argv: list[str]) -> None:
    """Raise ConfigError (one sentence) for the first argument that would carry a credential; never echoes it.

    Also refused: an interpolation that reads the key's environment variable (``${oc.env:SENTECH_API_KEY}``).
    """
    secrets = environment_secrets(_key_env_names(argv))
    key_envs = key_env_names(argv)
    for arg in argv:
        problem = override_problem(arg, secrets) or interpolation_problem(arg, key_envs)
        if problem is not None:
            raise ConfigError(f"Refusing {shown_name(arg, secrets)}: {problem}; {FIX}.")


def secret_in_resolved(node: Any, secrets: Iterable[str], prefix: str = "") -> str | None:
    """The dotted name of the first string in resolved config data that holds a secret's value (in any
    encoding ``decodings`` knows), or None."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            found = secret_in_resolved(value, secrets, f"{prefix}.{key}" if prefix else str(key))
            if found is not None:
                return found
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found = secret_in_resolved(value, secrets, f"{prefix}[{index}]")
            if found is not None:
                return found
    elif isinstance(node, str) and len(node) >= MIN_SECRET_CHARS:
        for view in decodings(node):
            if any(secret in view for secret in secrets):
                return prefix
    return None


def find_credentials(node: Any, prefix: str = "", secrets: Iterable[str] = ()) -> list[str]:
    """Dotted names of config entries that hold a credential: by name, or by a key-shaped value."""
    secrets = list(secrets)
    found: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if is_reference_name(str(key)):
                if (
                    isinstance(value, str)
                    and value
                    and (not ENV_NAME.fullmatch(value) or _looks_random(value) or credential_problem(value, secrets))
                ):
                    found.append(dotted)
            elif is_credential_name(str(key)) and value not in (None, "", {}, []) and not isinstance(value, Mapping):
                found.append(dotted)  # a mapping is a section (scorers.token_f1): its entries are checked
            else:
                found.extend(find_credentials(value, dotted, secrets))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found.extend(find_credentials(value, f"{prefix}[{index}]", secrets))
    elif isinstance(node, str) and credential_problem(node, secrets) is not None:
        found.append(prefix)
    return found


def redact_tree(node: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of plain config data with every credential entry (by name or value) replaced by ``[redacted]``."""
    secrets = list(secrets)
    if isinstance(node, Mapping):
        return {
            k: REDACTED
            if (
                is_credential_name(str(k))
                and not is_reference_name(str(k))
                and v not in (None, "")
                and not isinstance(v, Mapping)
            )
            else redact_tree(v, secrets)
            for k, v in node.items()
        }
    if isinstance(node, (list, tuple)):
        return [redact_tree(v, secrets) for v in node]
    if isinstance(node, str) and credential_problem(node, secrets) is not None:
        return REDACTED
    return node


_MEMO_CHARS, _MEMO_ENTRIES = 256, 4096  # Redactor.text remembers its answer for values this short, this many


@functools.cache
def _text_field_names(cls: type) -> tuple[str, ...]:
    """The fields of a dataclass that may hold text (their annotation names ``str``), found once per class."""
    return tuple(field.name for field in dataclasses.fields(cls) if "str" in str(field.type))


class Redactor:
    """Blanks out one secret in text a server controls: the whole key, and any long prefix or suffix of it.

    A server that cuts its error text (or ours, before this runs) can leave most of a key; so any run of at
    least ``max(8, len(key) // 2)`` characters from the key's start or end counts. A key shorter than
    ``MIN_SECRET_CHARS`` is not searched for (a test key like "k" occurs in every other word; no real key
    is that short).
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        n = len(secret)
        self.min_run = max(MIN_SECRET_CHARS, n // 2)
        head, tail = secret[: self.min_run], secret[n - self.min_run :]
        self._needles = (head, tail) if n >= MIN_SECRET_CHARS else ()
        if n < MIN_SECRET_CHARS:
            self._pattern = None
        else:
            # Longest prefix: head, then optionally each following character (nested, greedy).
            prefix = (
                re.escape(head)
                + "".join(f"(?:{re.escape(c)}" for c in secret[self.min_run :])
                + ")?" * (n - self.min_run)
            )
            # Longest suffix: optionally each earlier character (nested from the left), then tail.
            suffix = (
                "".join("(?:" for _ in range(n - self.min_run))
                + "".join(f"{re.escape(c)})?" for c in secret[: n - self.min_run])
                + re.escape(tail)
            )
            self._pattern = re.compile(f"{prefix}|{suffix}")
        self._bytes_pattern = re.compile(self._pattern.pattern.encode()) if self._pattern is not None else None
        self._byte_needles = tuple(x.encode() for x in self._needles)
        # A long part of the key, base64-encoded (an echoed "Basic …" header): whatever its offset in the encoded
        # text, one of its three alignments to base64's 3-byte groups appears in the encoding as is.
        self._base64_needles = tuple(
            {
                encoded.decode()
                for needle in self._byte_needles
                for i in range(3)
                for encode in (base64.b64encode, base64.urlsafe_b64encode)
                if len(needle) - i >= 6
                for encoded in [encode(needle[i : i + 3 * ((len(needle) - i) // 3)])]
            }
        )
        self._base64_run = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
        self._all_needles = self._needles + self._base64_needles  # what _search looks for in unescaped text
        self._memo: dict[str, str] = {}
        self._previous_clean: dict[str, str] = {}  # per field: the last clean text completion_fields saw

    def text(self, value: str | None) -> str | None:
        """``value`` with the secret (or a long part of it) replaced by ``[redacted]``.

        The secret is also looked for in the value as it decodes (JSON/Python escapes such as ``\\u0073k-…``,
        percent-encoding, HTML character references): when a decoding shows it, the decoded value is what is
        kept, redacted.
        """
        if value is None or self._pattern is None or len(value) < self.min_run:
            return value
        if len(value) <= _MEMO_CHARS:  # short values repeat (a model name, a finish reason): checked once each
            cleaned = self._memo.get(value)
            if cleaned is None:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()
                cleaned = self._memo[value] = self._search(value)
            return cleaned
        return self._search(value)

    def _search(self, value: str) -> str:
        pattern = self._pattern
        assert pattern is not None  # text() searches only with a pattern
        if "\\" in value or "%" in value or "&" in value:
            for view in reversed(escaped_views(value)):  # the most decoded first
                for needle in self._needles:
                    if needle in view:
                        return pattern.sub(REDACTED, view)
        for needle in self._needles:
            if needle in value:
                return pattern.sub(REDACTED, value)
        for needle in self._base64_needles:
            if needle in value:
                return self._base64_runs(value)
        return value

    def _base64_runs(self, value: str) -> str:
        """``value`` with every base64 run that decodes to text holding the key (or a long part) replaced."""
        found = [
            run for run in self._base64_run.findall(value) if any(self._needles_in(d) for d in _base64_decoded(run))
        ]
        for run in found:
            value = value.replace(run, REDACTED)
        return value

    def _needles_in(self, text: str) -> bool:
        return any(needle in text for needle in self._needles)

    def completion_fields(self, record: Any) -> None:
        """Redact, in place, every text field of a record a server filled (a ``Completion``: output, error,
        finish_reason, response_model …): the one place server text is cleaned before it is stored or printed.

        A field whose text equals the same field's clean text of the previous record (the model name, repeated
        on every answer) is not searched again; nothing else is remembered (an answer's text is new every time).
        """
        if self._pattern is None:  # a key too short to search for (MIN_SECRET_CHARS): nothing to redact
            return
        min_run, previous, needles = self.min_run, self._previous_clean, self._all_needles
        record_type: type = type(record)
        for name in _text_field_names(record_type):
            value = getattr(record, name)
            # too short to hold a long part of the key, or this field's previous clean text (the model name)
            if not isinstance(value, str) or len(value) < min_run or previous.get(name) == value:
                continue
            if "\\" not in value and "%" not in value and "&" not in value:  # no escapes: the needles tell
                for needle in needles:
                    if needle in value:
                        break
                else:  # clean: what _search would find, without its call (the common case)
                    previous[name] = value
                    continue
            cleaned = self._search(str(value))
            if cleaned == value:
                previous[name] = value
            else:
                setattr(record, name, cleaned)

    def raw(self, value: bytes) -> bytes:
        """The same for a raw body, before anything cuts it into a snippet."""
        if self._bytes_pattern is None:
            return value
        for needle in self._byte_needles:
            if needle in value:
                return self._bytes_pattern.sub(REDACTED.encode(), value)
        return value
