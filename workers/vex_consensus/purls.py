"""Package URLs: the one canonical form a purl takes in the fleet, and statement scope.

Every purl entering the fleet (OpenVEX and CSAF statements, an advisory's
``affected[]``, ``fleet vex`` arguments) goes through :func:`canonical_purl`, which
parses it with ``packageurl-python`` and renders the purl specification's canonical
form: type and qualifier keys lower-cased, qualifiers sorted by key, empty
qualifiers dropped, percent-encoding normalised, plus the per-type rules of the
specification (e.g. a PyPI name lower-cased). Two spellings of one package
therefore become one string, and one (purl, vulnerability) pair.

In canonical form every separator character inside a component (``@ ? # & =``) is
percent-encoded, so a canonical purl splits into its parts by those characters
alone: :func:`scope_of` does that without re-parsing, because scope is decided for
every statement of every recomputed pair. It must only be given canonical purls.

Scope (docs/workers.md, consensus rule 4): a statement applies to a pair when it names the same
package (type, namespace, name), its version is absent or equal, its qualifiers are
a subset of the pair's and its subpath is absent or equal (:func:`applies`). Among
one issuer's statements that apply, the more specific one wins
(:func:`specificity`).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Final, NamedTuple

from packageurl import PackageURL

_SHOWN_INPUT: Final = 120
"""Characters of a refused purl quoted in the error, so the error stays one short line."""


class PurlError(ValueError):
    """Not a purl the specification accepts; the message is one line naming it."""


def canonical_purl(text: str) -> str:
    """The canonical form of ``text`` (surrounding blanks ignored); raises :class:`PurlError`."""
    return _canonical(text.strip())


# A worker validates an advisory's purls and then applies it, and advisories repeat the
# same products: remembering recent answers parses each purl once (a refusal is not kept).
@lru_cache(maxsize=1 << 16)
def _canonical(value: str) -> str:
    # The specification parses the scheme case-insensitively; the library wants "pkg:".
    if value[:4].lower() == "pkg:":
        value = "pkg:" + value[4:]
    try:
        return str(PackageURL.from_string(value).to_string())
    except ValueError as exc:  # UnicodeError included
        raise PurlError(f"invalid purl {_shown(value)}: {_reason(exc, value)}") from None


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN_INPUT else value[:_SHOWN_INPUT] + "…")


def _reason(exc: ValueError, value: str) -> str:
    # The library often ends its message with the purl again; it is already quoted once.
    reason = " ".join(str(exc).split()).removesuffix(".")
    return reason.removesuffix(f": {value!r}").removesuffix(".") or type(exc).__name__


def canonical_purls(texts: Iterable[str]) -> list[str]:
    """The distinct canonical forms of ``texts`` in first-seen order, blank ones left out;
    raises :class:`PurlError` for the first purl that is not one."""
    return list(dict.fromkeys(canonical_purl(t) for t in texts if t.strip()))


def purl_problem(texts: Iterable[str]) -> str | None:
    """Why :func:`canonical_purls` would refuse ``texts`` (one line), or ``None``."""
    try:
        canonical_purls(texts)
    except PurlError as exc:
        return str(exc)
    return None


class PurlScope(NamedTuple):
    """The parts of a canonical purl that decide scope, still percent-encoded.

    ``package`` is ``pkg:type/namespace/name``; ``qualifiers`` holds ``key=value``
    items. Comparing encoded parts is exact because the encoding is canonical.
    """

    package: str
    version: str | None
    qualifiers: frozenset[str]
    subpath: str | None


class ScopeSpecificity(NamedTuple):
    """Ordered most significant first; a greater tuple is a more specific scope."""

    versioned: bool
    qualifiers: int
    subpath: bool


_NO_QUALIFIERS: Final[frozenset[str]] = frozenset()


def scope_of(purl: str) -> PurlScope:
    """Split a canonical purl (as :func:`canonical_purl` returns it) into its scope parts."""
    rest, _, subpath = purl.partition("#")
    rest, _, query = rest.partition("?")
    package, _, version = rest.partition("@")
    return PurlScope(
        package=package,
        version=version or None,
        qualifiers=frozenset(query.split("&")) if query else _NO_QUALIFIERS,
        subpath=subpath or None,
    )


def package_of(purl: str) -> str:
    """``pkg:type/namespace/name`` of a canonical purl: the key statements are found by."""
    return purl.partition("#")[0].partition("?")[0].partition("@")[0]


def applies(statement: PurlScope, pair: PurlScope) -> bool:
    """Whether a statement about ``statement`` speaks for the pair's ``pair`` (rule 4)."""
    return (
        statement.package == pair.package
        and (statement.version is None or statement.version == pair.version)
        and statement.qualifiers <= pair.qualifiers
        and (statement.subpath is None or statement.subpath == pair.subpath)
    )


def specificity(scope: PurlScope) -> ScopeSpecificity:
    """How specific a scope is: a version first, then more qualifiers, then a subpath."""
    return ScopeSpecificity(
        versioned=scope.version is not None,
        qualifiers=len(scope.qualifiers),
        subpath=scope.subpath is not None,
    )


def scope_reason(statement: PurlScope, pair: PurlScope) -> str:
    """Why a statement's scope does or does not apply to the pair, in a few words."""
    if statement == pair:
        return "names this exact purl"
    if statement.package != pair.package:
        return f"names another package ({statement.package})"
    if statement.version is not None and statement.version != pair.version:
        return f"names version {statement.version}, not {pair.version or 'the versionless pair'}"
    extra = sorted(statement.qualifiers - pair.qualifiers)
    if extra:
        return f"qualifier {', '.join(extra)} is not among the pair's"
    if statement.subpath is not None and statement.subpath != pair.subpath:
        return f"names subpath {statement.subpath}, not {pair.subpath or 'the whole package'}"
    broader: list[str] = []
    if statement.version is None and pair.version is not None:
        broader.append("every version")
    if statement.qualifiers != pair.qualifiers:
        shared = ", ".join(sorted(statement.qualifiers)) or "no qualifier"
        broader.append(f"a qualifier subset ({shared})")
    if statement.subpath is None and pair.subpath is not None:
        broader.append("the whole package")
    return "covers the pair: " + ", ".join(broader)
