"""Data stage: raw corpora -> filtered, tokenised, packed shards -> a weighted, resumable mixture."""
