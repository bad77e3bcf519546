"""mlfleet: self-hosted managed MLflow speaking SageMaker's API."""
