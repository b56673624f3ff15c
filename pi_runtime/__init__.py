"""Device-side runtime: numpy, pillow, tokenizers, onnxruntime; never torch. (Issue 5; not built yet.)"""
