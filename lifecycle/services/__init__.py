"""Lifecycle services. Import the module you need: `from lifecycle.services import keys, jobs, policies`."""
