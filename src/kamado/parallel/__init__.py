"""Distributed pre-training on torch.distributed: device mesh, FSDP2, tensor and pipeline parallelism, DCP, FP8."""
