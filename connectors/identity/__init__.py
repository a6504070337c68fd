"""The identity crosswalk: which records in which systems are the same customer (CUID)."""
