"""The unified graph: GraphQL types and how each field is resolved from the department systems."""
