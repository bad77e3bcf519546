"""MLflow's REST surface as mlfleet sees it: which IAM action each route needs, and the
hardening applied to requests before MLflow serves them. Used by the gateway and the workers'
fast lane alike."""
