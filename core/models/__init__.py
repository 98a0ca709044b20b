"""Networks: per-modality encoders, fusion, representation and task head."""
