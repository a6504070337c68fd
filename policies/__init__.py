"""Field policies: the rule file security owns, the pure decision engine, and the masks.

Imports nothing else of c360. Nothing here does I/O except reading a policy file.
"""

from policies.engine import (
    Candidate,
    Conditional,
    Decision,
    ExplainRow,
    RecordFacts,
    StaticDecisions,
    decide,
    decide_record,
    explain,
    format_matrix,
    static_decision,
)
from policies.masks import (
    KEYED_MASK_NAMES,
    MASK_NAMES,
    MASKS,
    REDACTED,
    Mask,
    make_hash_mask,
    masks_with_hash,
)
from policies.principal import Principal
from policies.rules import (
    ANY_ROLE,
    DEFAULT_POLICY_PATH,
    VERBS,
    Coverage,
    Policy,
    PolicyFileError,
    PolicySet,
    Rule,
    load_default_policy,
    load_policy_file,
    parse_policy_text,
    validate_against,
)

__all__ = [
    "ANY_ROLE",
    "DEFAULT_POLICY_PATH",
    "KEYED_MASK_NAMES",
    "MASKS",
    "MASK_NAMES",
    "REDACTED",
    "VERBS",
    "Candidate",
    "Conditional",
    "Coverage",
    "Decision",
    "ExplainRow",
    "Mask",
    "Policy",
    "PolicyFileError",
    "PolicySet",
    "Principal",
    "RecordFacts",
    "Rule",
    "StaticDecisions",
    "decide",
    "decide_record",
    "explain",
    "format_matrix",
    "load_default_policy",
    "load_policy_file",
    "make_hash_mask",
    "masks_with_hash",
    "parse_policy_text",
    "static_decision",
    "validate_against",
]
