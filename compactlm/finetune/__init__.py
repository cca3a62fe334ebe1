"""Post-training: SFT, LoRA and DPO on the pretraining trainer."""
