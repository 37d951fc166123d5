"""Config dataclasses <-> CLI flags: every option reaches the trainer, with its declared docstring as help."""

import argparse

from koch_explore.cli.config import add_config_arguments, config_from_args, field_docs
from koch_explore.detect.train import TrainConfig
from koch_explore.synthesis.losses import LossWeights
from koch_explore.synthesis.trainer import SynthTrainConfig


def _parser():
    p = argparse.ArgumentParser()
    add_config_arguments(p, SynthTrainConfig)
    add_config_arguments(p, LossWeights, prefix="--w-", help_default="loss weight of the {name} term")
    return p


def test_defaults_round_trip_to_the_dataclass():
    args = _parser().parse_args([])
    cfg = config_from_args(SynthTrainConfig, args, weights=config_from_args(LossWeights, args, prefix="w_"))
    assert cfg == SynthTrainConfig()
    p = argparse.ArgumentParser()
    add_config_arguments(p, TrainConfig)
    assert config_from_args(TrainConfig, p.parse_args([])) == TrainConfig()


def test_flags_of_every_kind_are_parsed_into_typed_fields():
    args = _parser().parse_args(["--steps", "12", "--max-minutes", "2.5", "--detail-layers", "conv2", "conv8",
                                 "--bank", "b.safetensors", "--w-severity", "10"])
    cfg = config_from_args(SynthTrainConfig, args, weights=config_from_args(LossWeights, args, prefix="w_"))
    assert cfg.steps == 12 and cfg.max_minutes == 2.5 and cfg.bank == "b.safetensors"
    assert cfg.detail_layers == ("conv2", "conv8")  # a tuple again, like the default
    assert cfg.weights.severity == 10.0 and cfg.weights.detail == LossWeights().detail
    p = argparse.ArgumentParser()
    add_config_arguments(p, TrainConfig)
    t = config_from_args(TrainConfig, p.parse_args(["--no-amp", "--final-class-weights", "1", "1", "3", "3", "3"]))
    assert t.amp is False and t.final_class_weights == (1.0, 1.0, 3.0, 3.0, 3.0)
    # bool | None: --amp / --no-amp force it, neither leaves the trainer to decide
    assert TrainConfig().amp is None and config_from_args(TrainConfig, p.parse_args(["--amp"])).amp is True


def test_help_is_the_docstring_written_under_the_field():
    docs = field_docs(SynthTrainConfig)
    assert docs["g_steps_per_d"].startswith("Generator steps per discriminator step")
    text = _parser().format_help()
    assert "Generator steps per discriminator step" in text and "Total variation of the synthetic fundus" in text


def test_every_option_of_every_config_is_documented_where_declared():
    from dataclasses import fields

    from koch_explore.appendix.config import AuditConfig
    from koch_explore.detect.adapter import AdapterConfig
    from koch_explore.koch.test import KochConfig
    from koch_explore.synthesis.local_train import LocalTrainConfig
    from koch_explore.vessels.train import VesselTrainConfig

    for cls in (TrainConfig, SynthTrainConfig, LocalTrainConfig, LossWeights, VesselTrainConfig, AuditConfig, KochConfig, AdapterConfig):
        docs = field_docs(cls)
        missing = [f.name for f in fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: no docstring under {missing} (each becomes a --flag's help)"
