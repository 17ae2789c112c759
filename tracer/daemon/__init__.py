"""The daemon: the sessions it traces and how it runs them.

- main.py: `provtrace daemon` — wires the capture, the store, the router,
  the sessions and the gRPC server (tracer/serve/) together, and runs them.
- router.py: the daemon's capture pipeline (tracer/pipeline/) on a thread of
  its own, with finish requests, ends written again and the finisher.
- sessions.py: TracingStore, the SessionWrites and SessionReads the server
  calls: kernels registered and followed, cells' windows, commands handed
  over, queries on the store; it owns a CellMerger for the live runs.
- memory.py: CellMerger (cell reports merged in memory: IOPub, gRPC
  reports, runner) and InMemoryStore (merged reports alone, for tests).
- ingest.py: discovered kernels and their IOPub streams, into sessions.
- watch.py: live sessions' inputs watched; a pushed `stale` event on change.

tracer/serve/ is the transport (gRPC server, client, auth, sockets); it
never imports this package.
"""
