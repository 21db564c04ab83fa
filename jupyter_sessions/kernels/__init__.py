"""Talking to kernels: jupyter_client connections to session kernels, later the run protocol."""
