"""Dataset manifests (one TOML per dataset), shipped inside the package as `koch_explore.data_manifests`."""
