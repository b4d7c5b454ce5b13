from setuptools import find_packages, setup


setup(
    name="modeling_pera",
    version="0.1.0",
    description="PerA (perfectly aligned sample pairs) self-supervised remote-sensing foundation model for transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["modeling_pera", "modeling_pera.*"]),
    python_requires=">=3.11",
    install_requires=[
        "transformers>=5.23,<6",
        "torch>=2.6",
        "torchvision",
        "accelerate",
        "datasets",
        # StatefulDataLoader: a streamed dataset resumes at its saved position in every worker
        "torchdata",
        "safetensors",
        "evaluate",
        "numpy",
        "pillow",
        # GeoTIFF and single-band-per-file archives (BigEarthNet) without a GDAL install
        "tifffile",
        "tqdm",
        # feature-map figures (modeling_pera.visualization, examples/visualize_features.py)
        "matplotlib",
    ],
    extras_require={
        # large GeoTIFF/COG scenes read a window at a time (--train_scenes)
        "geo": ["rasterio"],
        # a TorchGeo dataset and its geo sampler as the pretraining source (--torchgeo_dataset)
        "torchgeo": ["rasterio", "torchgeo"],
        # PerA encoders as TerraTorch backbones (modeling_pera.terratorch_backbone); its 1.2.12+ need TorchGeo 0.9
        "terratorch": ["terratorch<1.2.12"],
        "dev": [
            "rasterio",
            "pytest",
            "pytest-timeout",
            # style: `make test` runs `ruff check` first (ruff.toml)
            "ruff",
            # transformers' common model tests (fetched at test time) need it
            "parameterized",
            "tensorboard",
            "scikit-learn",
        ],
    },
)
