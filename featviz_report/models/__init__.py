"""Models from a spec: torchvision, timm, factories, pickles refused, exported programs checked."""
