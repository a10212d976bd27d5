FROM python:3.11-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm make \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md package.json package-lock.json ./
COPY core ./core
COPY storage ./storage
COPY chat_actors ./chat_actors
COPY web ./web
COPY scripts ./scripts
COPY alembic.ini ./
RUN pip install --no-cache-dir . \
    && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && python -m scripts.vendor_js \
    && rm -rf node_modules
RUN useradd --system --home /app chat && chown -R chat /app
USER chat
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health').status == 200 else 1)"
CMD ["python", "-m", "scripts.serve"]
