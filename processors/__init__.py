"""Faust agents that apply ingest events to the resource state."""
