"""Two more department systems for the demo world's people, each in its own shape: the
loyalty programme (an Apollo Federation 2 subgraph on Node) and the offline stores (a
REST API in Python). `tests/systems/fixtures.py` starts and stops them."""
