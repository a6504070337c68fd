"""The gateway server: app assembly, configuration, CLI, and the parts that wrap every request."""
