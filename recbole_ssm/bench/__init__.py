"""recbole-ssm bench."""
