# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Sharing PerA checkpoints on the Hugging Face Hub: a model card written from the saved folder, and the upload.

A folder written by `save_pretrained` (or by [`~modeling_pera.pretraining.export_pretrained`]) already holds the weights,
the config with its `auto_map`, the image processor and the Hub code files, so that it loads with
`trust_remote_code=True` where this package is not installed. [`write_model_card`] adds a `README.md` describing the
model, its bands and input statistics, how it was trained and how well it probes; [`push_folder_to_hub`] uploads the
folder.
"""

import math
import os
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from safetensors import safe_open

from .configuration_pera import PeraConfig
from .image_processing_pera import PeraImageProcessor


MODEL_CARD_TAGS = ["remote-sensing", "earth-observation", "self-supervised", "pera"]
PAPER_URL = "https://arxiv.org/abs/2505.19447"
CITATION = """@article{shen2025pera,
  title   = {A Contrastive Learning Foundation Model Based on Perfectly Aligned Sample Pairs for Remote Sensing
             Images},
  author  = {Shen, H. and Gu, H. and Li, H. and Yang, Y. and Qiu, A.},
  journal = {arXiv preprint arXiv:2505.19447},
  year    = {2025}
}"""
# Tensors of a pretraining checkpoint that are not its (teacher) encoder.
_NON_ENCODER_PREFIXES = ("student.", "student_dino_head.", "teacher_dino_head.", "pixel_head.", "center")


def _markdown_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _count_encoder_parameters(folder: Path) -> int:
    """The number of encoder values in the folder's safetensors weights (read from the file headers): all of them in
    an encoder folder, the teacher's in a pretraining checkpoint."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                if not name.startswith(_NON_ENCODER_PREFIXES):
                    total += math.prod(weights.get_slice(name).get_shape())
    return total


def _format_count(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.2f}B"
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def _format_factor(factor: float) -> str:
    """`1/255` rather than `0.00392157`."""
    inverse = 1 / factor
    return f"1/{round(inverse)}" if factor < 1 and abs(inverse - round(inverse)) < 1e-6 else f"{factor:g}"


def _format_result(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, float) else str(value)


def _usage_snippet(repo_id: str, config: PeraConfig) -> str:
    num_patches = (config.image_size // config.patch_size) ** 2
    if config.num_channels == 3:
        read_image = 'image = Image.open("scene.png").convert("RGB")\ninputs = processor(image, return_tensors="pt")'
        imports = "import torch\nfrom PIL import Image\nfrom transformers import AutoImageProcessor, AutoModel"
    else:
        read_image = (
            f'pixels = tifffile.imread("scene.tif")  # (height, width, {config.num_channels}), bands as above\n'
            'inputs = processor(pixels, input_data_format="channels_last", return_tensors="pt")'
        )
        imports = "import tifffile\nimport torch\nfrom transformers import AutoImageProcessor, AutoModel"
    return f"""```python
{imports}

processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()

{read_image}
with torch.no_grad():
    outputs = model(**inputs)
image_features = outputs.pooler_output  # (1, {config.hidden_size}): the final CLS token
patch_features = outputs.last_hidden_state[:, 1:]  # (1, {num_patches}, {config.hidden_size}): one token per patch
```"""


def _introduction(config: PeraConfig) -> str:
    if "PeraForPreTraining" in (config.architectures or []):
        contents = (
            "This repository holds the full pretraining checkpoint (student, EMA teacher, heads); `AutoModel` loads "
            "its teacher encoder, the network to use downstream."
        )
    else:
        contents = "This repository holds the teacher encoder, the network to use downstream."
    return (
        f'A [PerA]({PAPER_URL}) encoder for remote-sensing images, for 🤗 transformers. PerA ("perfectly aligned '
        'sample pairs") is a self-supervised, DINO-style self-distillation method: each student/teacher pair is one '
        "crop with two photometric views, whose patches are split into disjoint random sets (here the student sees "
        f"{config.student_ratio:.0%}, the teacher {config.teacher_ratio:.0%}, and the student predicts the pixels of "
        "the rest from mask tokens). "
        + contents
        + " Its CLS token and patch tokens are general-purpose image features (k-NN and linear probes, segmentation "
        "and detection heads, fine-tuning)."
    )


def _architecture_table(config: PeraConfig, num_parameters: int) -> str:
    return _markdown_table(
        ("", ""),
        [
            (
                "architecture",
                f"ViT (pre-norm, CLS token, learned position embeddings), {_format_count(num_parameters)} parameters",
            ),
            (
                "width / depth / heads",
                f"{config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads}",
            ),
            ("patch size", f"{config.patch_size} px"),
            ("input", f"{config.num_channels} bands, {config.image_size} x {config.image_size} px (other sizes work)"),
            ("position embeddings at other sizes", f'bicubic, "{config.position_embedding_interpolation}" rule'),
        ],
    )


def _bands_section(config: PeraConfig, processor: PeraImageProcessor) -> str:
    """The bands with their statistics, and what the processor does to the pixels."""
    band_names = processor.band_names or config.band_names
    wavelengths = processor.wavelengths or config.wavelengths
    band_rows = [
        (
            index + 1,
            name,
            f"{wavelengths[index]:g}" if wavelengths else "-",
            f"{processor.image_mean[index]:g}",
            f"{processor.image_std[index]:g}",
        )
        for index, name in enumerate(band_names)
    ]
    bands = _markdown_table(("#", "band", "wavelength (µm)", "mean", "std"), band_rows)
    size = processor.size
    steps = [f"subtracts {processor.offset:g}"] if processor.offset else []
    if processor.do_rescale:
        steps.append(f"multiplies by {_format_factor(processor.rescale_factor)}")
    if processor.do_resize:
        steps.append(f"resizes to {size['height']} x {size['width']} px")
    steps.append("normalises each band with the mean and standard deviation above")
    if len(steps) > 1:
        steps[-2:] = [f"{steps[-2]} and {steps[-1]}"]
    pixel_size = ""
    if processor.ground_sampling_distance is not None:
        pixel_size = f" The pretraining images have {processor.ground_sampling_distance:g} m per pixel."
    return f"{bands}\n\nThe image processor {', '.join(steps)}.{pixel_size}"


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    training: dict[str, Any] | None = None,
    probe_results: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """
    Writes `folder/README.md`, the model card of a saved PerA model.

    The card's metadata declares `library_name: transformers`, `pipeline_tag: image-feature-extraction` and the tags
    `remote-sensing`, `earth-observation`, `self-supervised` and `pera`. Its text describes the architecture (read
    from `config.json` and the weights), the bands with the processor's input statistics (from
    `preprocessor_config.json`), the training data and schedule, the probe results, and shows how to load the model
    with `AutoModel` and `AutoImageProcessor` (`trust_remote_code=True`).

    Args:
        folder (`str` or `os.PathLike`):
            A folder written by `save_pretrained`, with the image processor saved next to the model.
        repo_id (`str`, *optional*):
            The Hub repository the folder will be pushed to, used in the usage example; the folder's path otherwise.
        model_name (`str`, *optional*):
            The card's title; defaults to the repository name, or the folder name.
        license (`str`, *optional*):
            A Hub license identifier (e.g. `"apache-2.0"`, `"mit"`); left out of the metadata when not given.
        training (`dict`, *optional*):
            How the model was trained, one table row per entry, e.g. `{"data": "UC Merced (2,100 images)", "steps":
            350, "batch size": 32, "crops": "2 x 64 px + 8 x 32 px", "learning rate": "5e-4, cosine"}` (see
            [`pretraining_card_info`]).
        probe_results (`dict`, *optional*):
            Frozen-feature results, one table row per entry: floats are accuracies in [0, 1] and are shown as
            percentages, other values as they are (see [`probe_results_from_evaluation`]).
        datasets (`list[str]`, *optional*):
            Hub ids of the pretraining datasets, for the metadata.

    Returns:
        `Path`: the written `README.md`.
    """
    folder = Path(folder)
    config = PeraConfig.from_pretrained(folder)
    processor = PeraImageProcessor.from_pretrained(folder)
    location = repo_id or str(folder)
    model_name = model_name or location.rstrip("/").split("/")[-1]

    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=list(MODEL_CARD_TAGS),
        license=license,
        datasets=datasets,
    )

    sections = [
        f"# {model_name}",
        _introduction(config),
        "## Model\n\n" + _architecture_table(config, _count_encoder_parameters(folder)),
        "## Bands and input statistics\n\n" + _bands_section(config, processor),
    ]
    if training:
        sections.append("## Training data and schedule\n\n" + _markdown_table(("", ""), list(training.items())))
    if probe_results:
        results = [(name, _format_result(value)) for name, value in probe_results.items()]
        sections.append("## Frozen-feature results\n\n" + _markdown_table(("probe", "result"), results))
    sections += [
        "## Usage\n\nThe model and processor code travel with the weights, so loading needs `trust_remote_code=True` "
        "(or the `modeling_pera` package installed).\n\n" + _usage_snippet(location, config),
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = folder / "README.md"
    card.save(path)
    return path


def probe_results_from_evaluation(results: dict[str, Any]) -> dict[str, float]:
    """
    The model-card rows of a result of [`~modeling_pera.evaluation.evaluate_encoder`]: the k-NN top-1 accuracy and,
    when it was run, the linear probe's, labelled with the dataset, the split and the settings.
    """
    dataset = Path(results["data_dir"]).name
    setting = f"{dataset}, {results['num_train']} train / {results['num_test']} test, {results['pooling']} features"
    if results.get("random_init"):
        setting += ", random init"
    rows = {f"k-NN (k={results['knn']['k']}) top-1, {setting}": results["knn"]["top1_accuracy"]}
    if "linear_probe" in results:
        rows[f"linear probe top-1, {setting}"] = results["linear_probe"]["top1_accuracy"]
    return rows


def pretraining_card_info(
    arguments: Any, config: PeraConfig, completed_steps: int | None = None, num_processes: int = 1
) -> dict[str, Any]:
    """
    The `training` table of the model card of a pretraining run.

    Args:
        arguments ([`~modeling_pera.pretraining.PretrainingArguments`]):
            The run's arguments.
        config ([`PeraConfig`]):
            The model's config.
        completed_steps (`int`, *optional*):
            The optimizer steps done; the planned `max_train_steps` when not given.
        num_processes (`int`, *optional*, defaults to 1):
            Data-parallel processes, for the global batch size.

    Returns:
        `dict`: keyword arguments of [`write_model_card`] (`training`, and `datasets` for a Hub dataset).
    """
    if arguments.dataset_name and arguments.dataset_name != "imagefolder":
        data = f"`{arguments.dataset_name}`"
        if arguments.dataset_config_name:
            data += f" ({arguments.dataset_config_name})"
    elif arguments.train_scenes:
        data = "random windows of the scenes " + ", ".join(f"`{Path(scene).name}`" for scene in arguments.train_scenes)
    else:
        train_dirs = arguments.train_dir if isinstance(arguments.train_dir, list) else [arguments.train_dir]
        # folder names only: absolute local paths mean nothing to readers of the card
        data = "image folder(s) " + ", ".join(f"`{Path(directory).name}`" for directory in train_dirs if directory)
    batch_size = arguments.per_device_train_batch_size * num_processes * arguments.gradient_accumulation_steps
    steps = completed_steps if completed_steps is not None else arguments.max_train_steps
    training = {
        "data": data,
        "steps": steps if steps is not None else f"{arguments.num_train_epochs} epochs",
        "batch size": f"{batch_size} images ({arguments.per_device_train_batch_size} per device x {num_processes} "
        f"process(es) x {arguments.gradient_accumulation_steps} accumulation)",
        "crops per image": f"{config.num_global_crops} x {config.image_size} px global + {config.num_local_crops} x "
        f"{config.local_crop_size} px local",
        "patch sets": f"student {config.student_ratio:.0%}, teacher {config.teacher_ratio:.0%}, mask tokens from "
        f"block {config.mask_token_layer}",
        "learning rate": f"{arguments.learning_rate:g} peak (AdamW), linear warm-up over "
        f"{arguments.warmup_fraction:.0%} of the steps, cosine to {arguments.min_learning_rate:g}",
        "weight decay": f"{arguments.weight_decay_start:g} -> {arguments.weight_decay_end:g} (cosine)",
        "teacher EMA momentum": f"{arguments.momentum_start:g} -> 1 (cosine)",
        "teacher temperature": f"{arguments.teacher_temperature_start:g} -> {arguments.teacher_temperature_end:g} "
        f"over {arguments.teacher_temperature_warmup_fraction:.0%} of the steps",
        "prototypes": config.num_prototypes,
        "loss weights": f"DINO {config.dino_loss_weight:g}, KoLeo {config.koleo_loss_weight:g}, pixel "
        f"{config.pixel_loss_weight:g}",
        "seed": arguments.seed,
    }
    info: dict[str, Any] = {"training": training}
    if arguments.dataset_name and arguments.dataset_name != "imagefolder":
        info["datasets"] = [arguments.dataset_name]
    return info


class HubAccessError(OSError):
    """A push to the Hub that cannot work (no token, no network, no write access) or that failed."""


def push_command(folder: str | os.PathLike, repo_id: str) -> str:
    """The command that uploads a saved folder alone (`examples/push_to_hub.py`)."""
    return shlex.join(["python", "examples/push_to_hub.py", "--model_dir", str(folder), "--hub_model_id", repo_id])


def check_hub_access(repo_id: str, token: str | None = None) -> str:
    """
    Checks that a push to `repo_id` can work before the work that produces it: a token is found, the Hub answers, and
    the token may write to the repository's namespace. Raises [`HubAccessError`] saying what to do; returns the user.
    """
    try:
        identity = HfApi(token=token).whoami()
    except Exception as error:
        raise HubAccessError(
            f"--push_to_hub needs the Hub and a token, and the check failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'}). Log in with `hf auth login` (or give "
            "--hub_token) on a machine that reaches huggingface.co; or run without --push_to_hub and upload the "
            f"saved encoder afterwards: {push_command('<output_dir>/encoder', repo_id)}"
        ) from error
    user = identity.get("name", "")
    namespaces = {user, *(organisation.get("name") for organisation in identity.get("orgs", []))}
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    if namespace not in namespaces:
        raise HubAccessError(
            f"The Hub token belongs to {user!r}, who cannot write to {repo_id!r} (namespaces: {sorted(namespaces)}): "
            "give --hub_model_id in one of them, or a token of that namespace with --hub_token."
        )
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubAccessError(
            "The Hub token is read-only: create one with write access (huggingface.co/settings/tokens) and log in "
            "with it (`hf auth login`), or give it with --hub_token."
        )
    return user


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload PerA model",
) -> str:
    """
    Uploads a saved model folder to a Hub model repository, creating the repository if needed.

    Args:
        folder (`str` or `os.PathLike`):
            The folder to upload (weights, config, processor, code files, model card).
        repo_id (`str`):
            `"namespace/name"`, or `"name"` for a repository of the token's user.
        token (`str`, *optional*):
            A Hub token with write access; defaults to the logged-in one.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repository is private (an existing one keeps its visibility).
        commit_message (`str`, *optional*, defaults to `"Upload PerA model"`):
            The message of the upload commit.

    Returns:
        `str`: the full id of the repository.

    Raises:
        [`HubAccessError`]: when the upload fails, with the command that retries it.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} holds no config.json: save the model there with `save_pretrained` first.")
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_url.repo_id, folder_path=folder, commit_message=commit_message)
    except Exception as error:  # the Hub client raises many types (HTTP, connection, authentication)
        raise HubAccessError(
            f"The upload of {folder} to {repo_id} failed ({type(error).__name__}: {error}). The folder is saved as "
            f"it is; retry the upload alone (after `hf auth login`, on a machine that reaches huggingface.co):\n"
            f"  {push_command(folder, repo_id)}"
        ) from error
    return repo_url.repo_id


__all__ = [
    "HubAccessError",
    "MODEL_CARD_TAGS",
    "check_hub_access",
    "pretraining_card_info",
    "probe_results_from_evaluation",
    "push_command",
    "push_folder_to_hub",
    "write_model_card",
]
