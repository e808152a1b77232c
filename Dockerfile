# Completed by the service issue.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
