FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY rcbatch rcbatch
COPY runcomfy runcomfy
COPY producer producer
COPY worker worker
COPY config config
RUN pip install --no-cache-dir -c requirements.lock . flower
ENTRYPOINT []
