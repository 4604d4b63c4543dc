"""Images from the joint embedding: diffusion models conditioned on CLIP embeddings (DDPM, DDIM,
classifier-free guidance) and unCLIP's prior and decoder."""
