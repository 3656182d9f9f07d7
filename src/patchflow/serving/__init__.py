"""`patchflow serve`: the web page, the HTTP API, the job queue."""
