"""Models: the one loader for models and tokenizers, the embedded model, sentence embeddings."""
