"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) on PerA, as transformers'
`tests/models/dinov2/test_modeling_dinov2.py` runs them on DINOv2.

The common test modules come from the sdist of the installed transformers version (see `transformers_common.py`); this
module is skipped, with the reason, when they cannot be fetched. Tests that need an accelerator, flash attention,
DeepSpeed, the kernels library or `RUN_SLOW=1` skip themselves on a CPU-only machine.
"""

import dataclasses
import tarfile
import types
import unittest
from unittest import mock

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from modeling_pera import PeraBackbone, PeraConfig, PeraForImageClassification, PeraModel, pera_mask_indices
from transformers_common import fetch_sdist, import_or_skip, transformers_version


common = import_or_skip()
ModelTesterMixin = common.test_modeling_common.ModelTesterMixin
floats_tensor = common.test_modeling_common.floats_tensor
ids_tensor = common.test_modeling_common.ids_tensor
ConfigTester = common.test_configuration_common.ConfigTester
config_common_kwargs = common.test_configuration_common.config_common_kwargs


def load_backbone_common() -> types.ModuleType:
    """transformers' `tests/test_backbone_common.py` (`BackboneTesterMixin`), read from the same sdist as the modules
    above. It imports only transformers itself, so it is run from the archive as it is."""
    version = transformers_version()
    with tarfile.open(fetch_sdist(version), "r:gz") as archive:
        source = archive.extractfile(f"transformers-{version}/tests/test_backbone_common.py").read().decode("utf-8")
    module = types.ModuleType("transformers_tests.test_backbone_common")
    exec(compile(source, module.__name__, "exec"), module.__dict__)
    return module


BackboneTesterMixin = load_backbone_common().BackboneTesterMixin


# Inside transformers, a model's classes are listed in the Auto name mappings, and the common tests read those lists
# (e.g. which class gets classification labels, which is a base model without a loss). `AutoModel.register` does not
# touch them, so the test class lists PerA there while it runs.
PERA_AUTO_NAMES = (
    (modeling_auto.MODEL_MAPPING_NAMES, "PeraModel"),
    (modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "PeraForImageClassification"),
    (modeling_auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES, "PeraForPreTraining"),
    (modeling_auto.MODEL_FOR_BACKBONE_MAPPING_NAMES, "PeraBackbone"),
)


class PeraModelTester:
    def __init__(
        self,
        parent,
        batch_size=13,
        image_size=32,
        patch_size=8,
        num_channels=4,
        is_training=True,
        use_labels=True,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        drop_path_rate=0.1,
        type_sequence_label_size=10,
        initializer_range=0.02,
        local_crop_size=16,
        head_hidden_size=16,
        head_bottleneck_size=8,
        num_prototypes=16,
        attn_implementation="eager",
        mask_ratio=0.5,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.use_labels = use_labels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.type_sequence_label_size = type_sequence_label_size
        self.initializer_range = initializer_range
        self.local_crop_size = local_crop_size
        self.head_hidden_size = head_hidden_size
        self.head_bottleneck_size = head_bottleneck_size
        self.num_prototypes = num_prototypes
        self.attn_implementation = attn_implementation
        self.mask_ratio = mask_ratio

        # the sequence is the [CLS] token and one token per patch
        self.num_patches = (image_size // patch_size) ** 2
        self.seq_length = self.num_patches + 1
        # `bool_masked_pos` of the common tests (eager vs sdpa): the first `num_masks` of `mask_length` patches
        self.num_masks = int(self.mask_ratio * self.seq_length)
        self.mask_length = self.num_patches

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def get_config(self):
        return PeraConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            drop_path_rate=self.drop_path_rate,
            initializer_range=self.initializer_range,
            local_crop_size=self.local_crop_size,
            head_hidden_size=self.head_hidden_size,
            head_bottleneck_size=self.head_bottleneck_size,
            num_prototypes=self.num_prototypes,
            attn_implementation=self.attn_implementation,
        )

    def create_and_check_model(self, config, pixel_values, labels):
        model = PeraModel(config=config)
        model.to(torch_device)
        model.eval()
        result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        config.num_labels = self.type_sequence_label_size
        model = PeraForImageClassification(config)
        model.to(torch_device)
        model.eval()
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))
        self.parent.assertEqual(result.loss.shape, ())

        # single-band images
        config.num_channels = 1
        config.band_names = ["band_1"]
        model = PeraForImageClassification(config)
        model.to(torch_device)
        model.eval()
        pixel_values = floats_tensor([self.batch_size, 1, self.image_size, self.image_size])
        result = model(pixel_values)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, labels = self.prepare_config_and_inputs()
        inputs_dict = {"pixel_values": pixel_values}
        return config, inputs_dict


@require_torch
class PeraModelTest(ModelTesterMixin, unittest.TestCase):
    """
    transformers' common model tests on the PerA encoder and classifier. `PeraForPreTraining` is not among
    `all_model_classes`: it takes student/teacher crop pairs rather than `pixel_values` (its own tests cover it).
    """

    all_model_classes = (PeraModel, PeraForImageClassification, PeraBackbone)
    test_resize_embeddings = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for names, class_name in PERA_AUTO_NAMES:
            cls.enterClassContext(mock.patch.dict(names, {PeraConfig.model_type: class_name}))

    def setUp(self):
        self.model_tester = PeraModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=PeraConfig,
            has_text_modality=False,
            hidden_size=48,
            num_attention_heads=4,
            num_channels=4,
            image_size=32,
            patch_size=8,
            local_crop_size=16,
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_config_common_kwargs_cover_base_config(self):
        # `config_common_kwargs` is our stand-in for transformers' tests/utils module: it must name every argument
        # common to all configs, each with a non-default value, or `ConfigTester` checks less than it should.
        base = PreTrainedConfig()
        fields = {field.name for field in dataclasses.fields(PreTrainedConfig)} | {"output_attentions"}
        expected = fields - {"transformers_version", "is_encoder_decoder"}
        self.assertEqual(set(config_common_kwargs), expected)
        for key, value in config_common_kwargs.items():
            self.assertNotEqual(getattr(base, key), value, f"config_common_kwargs[{key!r}] is the default value")

    def test_model(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(*config_and_inputs)

    def test_for_image_classification(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_image_classification(*config_and_inputs)

    def test_model_get_set_embeddings(self):
        # as in test_modeling_dinov2.py: the input embedding of a ViT is its patch embedding, not an `nn.Embedding`
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIs(model.get_input_embeddings(), model.base_model.embeddings.patch_embeddings)
            new_input_embeddings = nn.Identity()
            model.set_input_embeddings(new_input_embeddings)
            self.assertIs(model.get_input_embeddings(), new_input_embeddings)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    def test_input_require_grads_with_gradient_checkpointing(self):
        # The common test of this skips itself (it looks for a `weight` on `get_input_embeddings()`, which a patch
        # embedding does not have). The case it guards, PEFT style: frozen embeddings, reentrant checkpointing, and
        # trainable block weights that only get gradients if the embedding output requires grad.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        config.num_labels = self.model_tester.type_sequence_label_size
        model = PeraForImageClassification(config).to(torch_device).train()
        model.pera.embeddings.requires_grad_(False)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
        labels = ids_tensor([self.model_tester.batch_size], config.num_labels)
        model(**inputs_dict, labels=labels).loss.backward()
        for layer in model.pera.layers:
            gradient = layer.attention.q_proj.weight.grad
            self.assertIsNotNone(gradient)
            self.assertGreater(gradient.abs().sum().item(), 0)

    def test_torch_export(self):
        # Our stand-in for transformers' `ExportTesterMixin` has no tests: export each class with `torch.export` and
        # check the program against eager on new inputs, at the native and at another image size.
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        batch_size, num_channels = self.model_tester.batch_size, self.model_tester.num_channels
        for model_class in self.all_model_classes:
            model = model_class(config).to(torch_device).eval()
            output_name = {
                PeraModel: "last_hidden_state",
                PeraForImageClassification: "logits",
                PeraBackbone: "feature_maps",
            }[model_class]
            for image_size in (self.model_tester.image_size, 2 * self.model_tester.image_size):
                with self.subTest(model_class.__name__, image_size=image_size):
                    sample = {"pixel_values": floats_tensor([batch_size, num_channels, image_size, image_size])}
                    program = torch.export.export(model, args=(), kwargs=sample, strict=False)
                    inputs = {"pixel_values": floats_tensor([batch_size, num_channels, image_size, image_size])}
                    with torch.no_grad():
                        torch.testing.assert_close(
                            program.module()(**inputs)[output_name], model(**inputs)[output_name]
                        )

        # the sparse input of pretraining (index tensors of static shape) exports too
        model = PeraModel(config).to(torch_device).eval()

        def sparse_inputs():
            visible, masked, _ = pera_mask_indices(
                torch.rand(batch_size, self.model_tester.num_patches), config.student_ratio, config.teacher_ratio
            )
            return {**inputs_dict, "visible_patch_index": visible, "masked_patch_index": masked}

        program = torch.export.export(model, args=(), kwargs=sparse_inputs(), strict=False)
        inputs = sparse_inputs()
        with torch.no_grad():
            torch.testing.assert_close(program.module()(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


@require_torch
class PeraBackboneTest(BackboneTesterMixin, unittest.TestCase):
    """transformers' common backbone tests on `PeraBackbone`, as `Dinov2BackboneTest` runs them."""

    all_model_classes = (PeraBackbone,)
    config_class = PeraConfig

    def setUp(self):
        self.model_tester = PeraModelTester(self)
