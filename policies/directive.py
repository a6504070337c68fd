"""The `@policy(name: ...)` schema directive: which rule of the policy file guards a field.

It prints in `schema.graphql`, so frontends and security read the same contract the
gateway enforces.
"""

from __future__ import annotations

import strawberry
from strawberry.schema_directive import Location


@strawberry.schema_directive(
    locations=[Location.FIELD_DEFINITION],
    description="The policy (in the gateway's policy file) that decides who may read this field.",
)
class Policy:
    name: str
