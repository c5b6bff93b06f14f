"""The typed config: the complete spec of a run, loaded from YAML plus `--set` overrides.

    sections.py  the pydantic models (data, model families, loss, train, run) and each key's role
    roles.py     the key roles and the key sets derived from them (what compare, sweep, resume
                 and evaluate ignore, keep or check)
    load.py      YAML and --set overrides -> a validated Config with absolute paths
    prior.py     the `prior:` section of `vaelab prior`
"""

from vaelab.config.load import (
                                check_keys,
                                config_from_text,
                                load_config,
                                parse_override,
                                read_yaml_mapping,
                                set_dotted,
                                validated,
)
from vaelab.config.sections import (
                                MODEL_KINDS,
                                AnyModelConfig,
                                Config,
                                ConvLayer,
                                DataConfig,
                                FieldNames,
                                FilterConfig,
                                LossConfig,
                                ModelConfig,
                                ResNetStack,
                                RunConfig,
                                Section,
                                SpatialModelConfig,
                                TrainConfig,
                                VQModelConfig,
                                model_kind,
)

__all__ = ["MODEL_KINDS", "AnyModelConfig", "Config", "ConvLayer", "DataConfig", "FieldNames", "FilterConfig",
           "LossConfig", "ModelConfig", "ResNetStack", "RunConfig", "Section", "SpatialModelConfig", "TrainConfig",
           "VQModelConfig", "check_keys", "config_from_text", "load_config", "model_kind", "parse_override",
           "read_yaml_mapping", "set_dotted", "validated"]
