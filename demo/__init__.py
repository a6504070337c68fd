"""Stand-ins for the department systems: sales DB, helpdesk REST API, marketing GraphQL API."""
