"""PerA for transformers: public names and Auto registration (the classes live in the Hub files)."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .bands_pera import PERA_PROCESSOR_PRESETS
from .configuration_pera import PERA_PRESETS, PeraConfig, pera_mask_counts
from .image_processing_pera import PeraImageProcessor
from .modeling_pera import (
    PeraBackbone,
    PeraForImageClassification,
    PeraForPreTraining,
    PeraForPreTrainingOutput,
    PeraModel,
    PeraPreTrainedModel,
    pera_mask_indices,
)


# Local registration: `AutoModel.from_pretrained` on a PerA checkpoint uses these classes when the package is
# installed, and the Hub code files (with trust_remote_code=True) when it is not.
AutoConfig.register(PeraConfig.model_type, PeraConfig, exist_ok=True)
AutoModel.register(PeraConfig, PeraModel, exist_ok=True)
AutoModelForPreTraining.register(PeraConfig, PeraForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(PeraConfig, PeraForImageClassification, exist_ok=True)
AutoBackbone.register(PeraConfig, PeraBackbone, exist_ok=True)
AutoImageProcessor.register(
    PeraConfig, image_processor_classes={"torchvision": PeraImageProcessor, "pil": PeraImageProcessor}, exist_ok=True
)

# Remote-code registration: `save_pretrained` copies the Hub code files next to the weights and writes the auto_map.
PeraConfig.register_for_auto_class()
PeraModel.register_for_auto_class("AutoModel")
PeraForPreTraining.register_for_auto_class("AutoModelForPreTraining")
PeraForImageClassification.register_for_auto_class("AutoModelForImageClassification")
PeraBackbone.register_for_auto_class("AutoBackbone")
PeraImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "PERA_PRESETS",
    "PERA_PROCESSOR_PRESETS",
    "PeraBackbone",
    "PeraConfig",
    "PeraForImageClassification",
    "PeraForPreTraining",
    "PeraForPreTrainingOutput",
    "PeraImageProcessor",
    "PeraModel",
    "PeraPreTrainedModel",
    "pera_mask_counts",
    "pera_mask_indices",
]
