"""Post-training: SFT, rounds of DPO with on- and off-policy preference pairs, model merging (PLaMo-100B §5)."""
