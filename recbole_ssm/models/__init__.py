"""recbole-ssm's RecBole models. ``MODELS`` maps each name to its class."""

MODELS: dict = {}
