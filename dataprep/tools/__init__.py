"""Tools over finished idxmaps and tokenizers: inspect, verify (integrity), merge and
verify-tokenizer."""
