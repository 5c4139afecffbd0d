"""A finished run's model for inference (``load_run``, ``open_run``) and as files (``export_run``)."""
