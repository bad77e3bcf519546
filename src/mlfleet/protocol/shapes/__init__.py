"""TypedDicts of the API shapes mlfleet implements, one module per AWS service; generated
by scripts/generate_shapes.py from botocore's service models."""
