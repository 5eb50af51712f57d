"""recbole-ssm tune."""
