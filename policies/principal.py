"""Who is asking: the principal a policy decision is made for.

The gateway builds it from a verified JWT; this package only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `purpose` is the purpose of use chosen for this request (one of `purposes`, the
    purposes the token allows), or None when the token names none.
    """

    subject: str
    roles: frozenset[str]
    purpose: str | None
    purposes: tuple[str, ...] = ()
    department: str | None = None
    amr: frozenset[str] = frozenset()  # how the holder signed in (the token's `amr`)
    acr: str | None = None  # the sign-in's authentication context class (`acr`)
