"""The search server (FastAPI) and its page: see :mod:`vtrkit.serve.app`."""
