# One image for both the ingress and the worker; the command picks the part.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 REACH_DATA_DIR=/data REACH_HTTP_HOST=0.0.0.0
COPY pyproject.toml README.md ./
COPY reach ./reach
COPY ingest ./ingest
COPY processors ./processors
COPY topics ./topics
COPY schemas ./schemas
COPY state ./state
RUN pip install --no-cache-dir .
VOLUME /data
EXPOSE 8080 6066
CMD ["reach", "ingress"]
