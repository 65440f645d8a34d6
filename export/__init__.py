"""Export stage: Distill checkpoint + BigVGAN -> a verified, self-describing model bundle.

This is the only part of distill-serve that imports torch.
"""
