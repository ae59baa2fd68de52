"""Ship artifacts: push them to model registries (Hugging Face Hub, OCI registries, a local
OCI image layout) and pull them onto devices, byte-verified against their manifest."""
