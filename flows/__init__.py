"""Prefect flows: each file one flow that only orchestrates work done by plain functions in tasks/."""
