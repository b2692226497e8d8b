"""Multi-LoRA: PEFT adapter loading, the adapter store (pages in the pool), batched LoRA math."""
