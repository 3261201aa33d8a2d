"""Pipeline stages, one module each, invoked by dvc.yaml through the `mlops` command."""
