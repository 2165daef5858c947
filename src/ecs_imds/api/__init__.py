"""The control plane: the operators' REST API (FastAPI), its auth, metrics and audit log."""
