"""StyleGAN2 networks, custom upfirdn2d / bias_act ops (CUDA + reference), safe checkpoint loading."""
