"""The packaged Hydra configs (``pkg://pretextlab.conf``): train.yaml, evaluate.yaml and the config groups."""
