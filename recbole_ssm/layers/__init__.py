"""recbole-ssm layers."""
