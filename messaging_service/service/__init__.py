"""One request's path through the running service: admission, lifecycle, workers, relay, commits."""
