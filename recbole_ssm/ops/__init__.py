"""recbole-ssm ops."""
