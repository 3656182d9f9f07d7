"""The networks: the causal video VAE, the Diffusion Transformer and their parts (attention, RoPE,
patches and NaViT packing, sequence parallelism), and the text encoders."""
