"""The /graphql endpoint's HTTP pipeline: one explicit sequence of small stages (method,
body, authentication, rate limit, admission and deadline, execution), then accounting."""
