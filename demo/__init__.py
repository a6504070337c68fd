"""Stand-ins for the department systems: sales DB, helpdesk REST API, marketing GraphQL API."""

from pathlib import Path

# The demo's graph declaration: what `c360 demo` serves, and the gateway's default.
GRAPH_FILE = Path(__file__).with_name("graph.graphql")
