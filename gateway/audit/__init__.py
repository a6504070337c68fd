"""The access log: who saw which field of which customer, and why."""
