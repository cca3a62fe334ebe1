"""Data stage: raw corpora -> filtered, tokenised, packed shards -> a weighted, resumable mixture.

- `readers.py`   SlimPajama, StarCoderData, jsonl / txt / parquet records and their filters
- `prepare.py`   `compactlm prepare`: tokenise in worker processes, write shards, resume after a kill
- `shards.py`    the shard format (and lit-gpt's LITPKDS, read as it is)
- `manifest.py`  manifest.json: a dataset's shards, counts, identity, and the tokenizer stored with it
- `mixture.py`   global sample i as a pure function of (seed, manifests, weights, i); the loader
"""
