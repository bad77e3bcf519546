"""MLflow versions per tracking server: which releases exist (releases), and the Python
environment each one runs from (environments)."""
