"""IAM's policy language: parsing and evaluating policies, trust policies, and the authorizer
every request asks. Knows nothing of where policies are stored (``mlfleet.iam``) or of any API."""
