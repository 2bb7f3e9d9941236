"""The service's Kafka topics: declared in one place, created explicitly at start-up."""

from topics.admin import create_topics
from topics.definitions import TopicSpec, service_topics

__all__ = ["TopicSpec", "create_topics", "service_topics"]
