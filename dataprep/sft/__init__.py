"""`dataprep sft` and raw mode: SFT records (`conversations`: alpaca, messages, sharegpt) →
chat-templated segments (`chat_template`, the one template registry) → token ids and loss
masks (`records`) → SFT idxmaps, packed or not (`run`); `raw` tokenizes the same records on the
fly for ``MP_DATASET_TYPE=raw``."""
