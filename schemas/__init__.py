"""Event schemas on the wire (Avro) and JSON Schema handling."""
