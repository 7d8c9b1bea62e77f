"""What runs next to a device: the model catalogue, its files, tokenisation, the ONNX session, pooling."""
