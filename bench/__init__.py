"""The load harness: c360 against the lower bound (a direct client) and the Node federation
gateways, on the demo department systems. `python -m bench --help`; see bench/README.md."""
