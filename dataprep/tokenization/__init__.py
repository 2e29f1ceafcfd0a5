"""Tokenizers: the one registry of tokenizer names (Pai's), their engines (fastokens, gigatoken,
tokenizers, transformers) and the probe that trusts an engine only when it reproduces the
reference; `worker_engine` holds the engine each worker process built."""
