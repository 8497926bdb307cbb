"""``fleetchat bench``: a load generator for OpenAI-compatible servers and for an engine in-process.

``targets`` sends one streamed request and times it (HTTP via the OpenAI SSE API, or an engine's
``generate`` directly); ``load`` runs a concurrency level against a target; ``stats`` turns request
records into the figures of one level; ``report`` prints them as a table and writes JSON.
"""
