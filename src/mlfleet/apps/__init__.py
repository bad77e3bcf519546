"""MLflow Apps: SageMaker's serverless tracking servers (service), served at its API (responses)."""
