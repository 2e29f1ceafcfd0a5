"""Reading and writing bytes: storage (local paths and fsspec URLs, atomic outputs), sources
(input files cut into chunks with line numbers), records (one json line → a checked value or
the reason it is bad) and the rejects file. No tokenizer here."""
