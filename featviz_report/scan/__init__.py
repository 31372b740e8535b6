"""Dataset scans: a folder of images through the model, each channel's top images and their crops."""
