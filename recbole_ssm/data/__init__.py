"""recbole-ssm data."""
