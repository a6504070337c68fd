"""The security console: `/console`, a page security opens to review who saw what, and
the access-log read models behind its GraphQL queries."""
