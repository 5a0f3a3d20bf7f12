"""Serving an export over the Open Inference Protocol (``ptflow-serve``).

The server is KServe's Python model server (``kserve``): its gRPC
``GRPCInferenceService`` and HTTP ``/v2`` endpoints, health and Prometheus metrics.
ptflow adds what a served file must keep from its run: the manifest's bytes (sha256
checked before loading), its example (checked before ready), its input description
(metadata, request checks) and a dynamic batcher with a bounded queue and deadlines.

- ``source``: which export a RUN_ID, run dir, export dir or ``models:/name/version`` names;
- ``verify``: the served bytes are the manifest's, and load nothing that runs code unasked;
- ``loaded``: the model, loaded from those bytes, with its input and output description;
- ``requests``: a protocol request checked against that description;
- ``batcher``: requests stacked along the batch dim, split back, bounded, with deadlines;
- ``server``: KServe's servers around it (host, limits, /health, SIGTERM);
- ``cli``: the ``ptflow-serve`` command; ``loadtest``, ``package``: its other jobs.

Nothing here imports ``kserve`` at module level except ``kserve_model`` (``kserve`` parses
``sys.argv`` when imported, and it cannot share a process with ``tritonclient.grpc``); the
load generator's client (``loadgen_client``) runs in its own process for that reason.

May import: core, inputs, runs (the store, the logged-model check), review.
"""
