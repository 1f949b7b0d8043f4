"""`anomalygpt serve`: a warm HTTP API around one loaded assistant (FastAPI + uvicorn).

The model loads once per process; every request that touches it goes through one worker
thread (`worker.ModelWorker`), so clients are served one at a time in arrival order and a
disconnecting client never leaves the model locked. `app.create_app` builds the API,
`client` is the thin client `anomalygpt inspect --server URL` uses.
"""
