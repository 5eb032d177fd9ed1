"""vLLM in-process backend (engine start, embedded model). Heavy imports stay lazy."""
