"""`sana train`: flow-matching training of the Linear DiT (full fine-tuning or LoRA, see `sana.train.lora`)."""

__all__ = ()
