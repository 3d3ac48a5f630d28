"""nextlat_pt: distributed pretraining with Next-Latent Prediction (NextLat).

torch is deliberately not pinned: on GPU machines the install keeps the CUDA torch that is
already there. Install torch first (`scripts/install.sh` does), then this package.
The CPU fallbacks in nextlat_pt/parallel/cpu_compat.py are written against the exact
megatron-core and DeepSpeed versions below; a test checks the pins.
"""

from setuptools import find_packages, setup

MEGATRON_CORE = "megatron-core==0.16.1"
DEEPSPEED = "deepspeed==0.19.8"

setup(
    name="nextlat_pt",
    version="0.1.0",
    description="Distributed LM pretraining with Next-Latent Prediction on megatron-core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nextlat_pt", "nextlat_pt.*"]),
    install_requires=[
        "torch>=2.6",
        MEGATRON_CORE,
        DEEPSPEED,
        "sentencepiece==0.2.3",
        "webdataset==1.0.2",
        "wandb==0.31.0",
        "transformers==5.24.0",
        "safetensors==0.8.0",
        "numpy>=1.26,<3",
        "PyYAML==6.0.4",
        "tqdm==4.70.1",
        "matplotlib==3.11.2",
        "zstandard==0.25.0",
    ],
    extras_require={
        "gpu": ["flash-attn==2.8.3.post2"],
        # lm-eval-harness for `nextlat-pt eval --lm-eval`; install under a torch constraint
        # (scripts/install.sh does) or pip may pull a CUDA build of torch.
        "eval": ["lm-eval[hf]==0.4.13"],
        "test": ["pytest==9.2.0", "ruff==0.17.6", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["nextlat-pt=nextlat_pt.cli:main"]},
)
