"""The HTTP ingress: checks requests and publishes records to Kafka."""
