"""Training stages: the audio autoencoder and the GAN."""
