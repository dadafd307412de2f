"""Teacher backends: openai (any OpenAI-compatible endpoint), hf (transformers), vllm."""
