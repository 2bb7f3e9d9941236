"""Reach resource ingestion: process wiring shared by the ingress and the workers."""
