"""Pydantic models for the recipe YAML: the one place that knows the schema.

Every model forbids unknown keys. `load_recipe` turns YAML and validation problems into one
`RecipeError` that names the file, the YAML path (e.g. `stages[1].method`), its line and the fix.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError

MAX_SAMPLES = 10_000_000
MAX_INPUT_ELEMENTS = 2**31 - 1   # one batch of one input; more is a typo, not a model
MAX_SEED = 2**32 - 1
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- model
class InputSpec(Strict):
    name: str = "input"
    shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(min_length=1, max_length=8)
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]

    @field_validator("shape")
    @classmethod
    def _not_absurd(cls, shape: list[int]) -> list[int]:
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"{shape} is {math.prod(shape):,} elements per batch; the limit is "
                             f"{MAX_INPUT_ELEMENTS:,} (2^31 - 1)")
        return shape


class ModelConfig(Strict):
    source: Literal["torchvision", "python", "onnx"]
    name: str | None = Field(None, description="torchvision architecture, e.g. resnet18")
    factory: str | None = Field(None, description="path/to/file.py:callable returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    weights: str | None = Field(None, description="state_dict checkpoint, loaded with weights_only=True")
    path: str | None = Field(None, description=".onnx file (source: onnx)")
    input: InputSpec | None = None
    inputs: list[InputSpec] | None = Field(None, min_length=1)
    outputs: list[str] | None = Field(None, min_length=1, description="output names, in model order")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        need = {"torchvision": "name", "python": "factory", "onnx": "path"}[self.source]
        if getattr(self, need) is None:
            raise ValueError(f"source '{self.source}' needs '{need}'")
        unused = {"torchvision": ("factory", "path"), "python": ("name", "path"),
                  "onnx": ("name", "factory", "weights")}[self.source]
        for key in unused:
            if getattr(self, key) is not None:
                raise ValueError(f"'{key}' does not apply to source '{self.source}'")
        if self.source == "onnx" and self.kwargs:
            raise ValueError("'kwargs' does not apply to source 'onnx'")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError("factory must look like 'path/to/file.py:callable'")
        if (self.input is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'input' (one tensor) or 'inputs' (a list)")
        names = [spec.name for spec in self.input_specs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        batches = {spec.shape[0] for spec in self.input_specs}
        if len(batches) != 1:
            raise ValueError("all inputs must share the first (batch) dimension")
        return self

    @property
    def input_specs(self) -> list[InputSpec]:
        return [self.input] if self.input is not None else list(self.inputs or [])


# ---------------------------------------------------------------- data
class Transform(Strict):
    resize: int | None = Field(None, ge=1, le=16384, description="resize the shorter side (image folders)")
    center_crop: int | None = Field(None, ge=1, le=16384, description="square centre crop (image folders)")
    mean: list[float] | None = Field(None, min_length=1)
    std: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Transform:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        if self.std is not None:
            if len(self.std) != len(self.mean or []):
                raise ValueError("'mean' and 'std' need the same length (one per channel)")
            if any(not math.isfinite(s) or s <= 0 for s in self.std):
                raise ValueError("'std' values must be finite and > 0")
            if any(not math.isfinite(m) for m in self.mean or []):
                raise ValueError("'mean' values must be finite")
        return self


class DataSource(Strict):
    source: Literal["files", "python"] | None = Field(None, description="default: python with factory, else files")
    path: str | None = Field(None, description=".npz, .npy, or a folder of images (one subfolder per class)")
    labels: str | None = Field(None, description=".npy of integer labels (with a .npy input file)")
    factory: str | None = Field(None, description="file.py:callable returning an iterable of (inputs, targets) batches")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="use at most this many samples")

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        source = self.source or ("python" if self.factory is not None else "files")
        if source == "python":
            if self.factory is None or ":" not in self.factory:
                raise ValueError("source 'python' needs factory: 'path/to/file.py:callable'")
            if self.path is not None or self.labels is not None:
                raise ValueError("'path' and 'labels' do not apply to source 'python'")
        else:
            if self.path is None:
                raise ValueError("give 'path' (.npz, .npy or an image folder), or 'factory' for Python data")
            if self.factory is not None or self.kwargs:
                raise ValueError("'factory' and 'kwargs' apply to source 'python' only")
        self.source = source
        return self


class DataConfig(Strict):
    calibration: DataSource
    eval: DataSource | None = None
    train: DataSource | None = Field(None, description="training data for fine-tuning (prune) and QAT")
    transform: Transform = Field(default_factory=Transform)
    batch_size: int = Field(32, ge=1, le=4096, description="batch size for calibration and evaluation")


# ---------------------------------------------------------------- gates, stages
class Gates(Strict):
    policy: Literal["point", "conservative"] | None = Field(
        None, description="how a gate whose 95% interval straddles its threshold (verdict inconclusive) decides: "
                          "point: by the point estimate; conservative: it fails (exit 3). Default point; a "
                          "stage's own gates default to the recipe's policy")
    max_accuracy_drop: float | None = Field(None, ge=0, le=100, description="points of the primary metric")
    min_speedup: float | None = Field(None, gt=0, le=10_000, description="vs FP32 on the same runtime")
    max_size_mb: float | None = Field(None, gt=0)


class StageBase(Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    gates: Gates | None = Field(None, description="gates on this stage's own output (the recipe's `gates:` "
                                                  "judge the last stage), e.g. what pruning alone may cost")


class AccuracyControl(Strict):
    """Automatic mixed precision: keep the layers that cost the most accuracy in float, one at a time from a
    sensitivity ranking, until the drop is within `max_drop` or `max_fallback_layers` are spent."""
    max_drop: float = Field(0.5, gt=0, description="allowed drop of the metric vs FP32 on the same runtime "
                                                   "(points for top-1/agreement/cosine x100)")
    max_fallback_layers: int = Field(10, ge=1, le=10_000, description="most layers kept in float")
    metric: Literal["primary", "top1", "top1_agreement", "cosine"] = Field(
        "primary", description="what is ranked and gated: the recipe's primary metric or a built-in one")
    samples: int = Field(300, ge=20, le=MAX_SAMPLES, description="eval samples used to rank layers and check the drop")

    @field_validator("max_fallback_layers", mode="before")
    @classmethod
    def _budget(cls, value):
        if value == 0:
            raise ValueError("a budget of 0 layers keeps nothing in float: remove accuracy_control for plain INT8, "
                             "or allow at least 1 layer")
        return value


class QuantizeConfig(StageBase):
    type: Literal["quantize"]
    mode: Literal["static", "dynamic"] = Field(
        "static", description="static: INT8 activations from calibration; dynamic: INT8 weights, activations "
                              "quantized at run time (no calibration)")
    backend: Literal["openvino", "onnxruntime", "torch", "tensorrt", "executorch"] = Field(
        description="openvino: NNCF; onnxruntime: ORT quantize_static/quantize_dynamic; torch: torchao "
                    "(mode dynamic only, the model stays a torch module); tensorrt: NVIDIA ModelOpt's ONNX PTQ "
                    "on CPU, TensorRT-style symmetric QDQ (compress[tensorrt]); executorch: PT2E with XNNPACK's "
                    "quantizer, lowered to a .pte (compress[mobile])")
    method: Literal["minmax", "percentile", "entropy", "auto"] | None = Field(
        None, description="activation range estimation; default: the backend's own default. auto: try the range "
                          "estimators and accuracy-preserving options the backend offers, keep the best by the "
                          "recipe's primary metric on the eval data (every candidate is in the report)"
    )
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="calibration samples (default 300)")
    preset: Literal["performance", "mixed"] | None = Field(
        None, description="backend openvino: performance: symmetric activations; mixed: asymmetric activations; "
                          "default: NNCF's (mixed for transformers, else performance)"
    )
    model_type: Literal["auto", "transformer", "generic"] = Field(
        "auto", description="the library's scheme for a model family; auto: transformer when the graph has "
                            "attention (NNCF ModelType.TRANSFORMER: SmoothQuant, no quantizers where they hurt "
                            "attention; ONNX Runtime: only the layers with weights are quantized (its docs advise mode dynamic "
                            "for transformers)"
    )
    scheme: Literal["auto", "u8s8", "u8s8_reduce_range", "s8s8"] = Field(
        "auto", description="ONNX Runtime INT8 scheme; auto picks by measured agreement on this CPU"
    )
    per_channel: bool = True
    ignore: list[str] = Field(default_factory=list, description="node names to keep in float")
    high_precision: Literal["fp16", "fp32"] | None = Field(
        None, description="backend tensorrt: dtype of the layers left unquantized (TensorRT builds the graph as "
                          "typed); default: the TensorRT target's, else fp32")
    bias_correction: Literal["full", "fast"] | None = Field(
        None, description="NNCF (backend openvino, static): re-estimate each layer's bias after quantization. "
                          "full: from the quantized layers' real outputs on calibration data (recovers accuracy "
                          "when INT8 shifts activations, e.g. small or pruned CNNs); fast: NNCF's own default, a "
                          "per-layer estimate. Default: full, except fast for transformers (measured: full bias "
                          "correction costs a BERT encoder 3 points of cosine)")
    accuracy_control: AccuracyControl | None = Field(
        None, description="static mode: keep the most sensitive layers in float until the drop is within max_drop")
    sensitivity: bool = Field(False, description="static mode: rank every quantizable layer by the metric with only "
                                                 "it quantized and with only it left in float (kept in the report)")

    @model_validator(mode="after")
    def _check(self) -> QuantizeConfig:
        if self.mode == "dynamic" and (self.accuracy_control is not None or self.sensitivity):
            raise ValueError("'accuracy_control' and 'sensitivity' apply to mode static (they rank calibrated layers)")
        if self.backend not in ("openvino", "onnxruntime", "tensorrt", "executorch") and (
                self.accuracy_control is not None or self.sensitivity):
            raise ValueError(f"'accuracy_control' and 'sensitivity' are offered for backends openvino, onnxruntime, "
                             f"tensorrt and executorch; not yet for {self.backend}")
        if self.mode == "dynamic":
            for key, default in (("method", None), ("samples", None), ("preset", None), ("model_type", "auto"),
                                 ("bias_correction", None)):
                if getattr(self, key) != default:
                    raise ValueError(f"'{key}' applies to mode static only: dynamic quantization needs no calibration")
            if self.scheme not in ("auto", "u8s8", "u8s8_reduce_range"):
                raise ValueError("mode dynamic takes scheme auto, u8s8 or u8s8_reduce_range (ORT quantizes "
                                 "activations to uint8 at run time)")
        if self.backend == "torch":
            if self.mode != "dynamic":
                raise ValueError("backend 'torch' offers mode dynamic only (torchao INT8 weights + dynamic INT8 "
                                 "activations); for static INT8 use backend openvino or onnxruntime")
            if self.scheme != "auto" or not self.per_channel or self.ignore:
                raise ValueError("'scheme', 'per_channel' and 'ignore' do not apply to backend torch")
        if self.backend == "openvino":
            if self.method == "entropy":
                raise ValueError("method 'entropy' is not offered by NNCF; use minmax or percentile")
            if self.scheme != "auto":
                raise ValueError("'scheme' applies to backend onnxruntime only")
            if not self.per_channel:
                raise ValueError("'per_channel: false' applies to backend onnxruntime only (NNCF is per-channel)")
        if self.backend == "tensorrt":
            if self.mode != "static":
                raise ValueError("backend 'tensorrt' is static INT8 (explicit QDQ from calibration)")
            if self.method == "percentile":
                raise ValueError("method 'percentile' is not offered by ModelOpt; use minmax (its 'max') or entropy")
            if self.scheme != "auto" or not self.per_channel or self.preset is not None:
                raise ValueError("'scheme', 'per_channel' and 'preset' do not apply to backend tensorrt (TensorRT "
                                 "takes symmetric INT8: per-channel weights, per-tensor activations)")
        elif self.high_precision is not None:
            raise ValueError("'high_precision' applies to backend tensorrt only")
        if self.backend == "executorch":
            if self.mode != "static":
                raise ValueError("backend 'executorch' is static INT8 (XNNPACK has no weight-only INT8)")
            if self.method not in (None, "minmax", "auto") or self.scheme != "auto" or self.preset is not None:
                raise ValueError("backend 'executorch' takes XNNPACK's symmetric INT8 with min/max observers: "
                                 "'method' (other than minmax), 'scheme' and 'preset' do not apply")
        if self.model_type != "auto" and self.backend not in ("openvino", "onnxruntime"):
            raise ValueError("'model_type' applies to backends openvino and onnxruntime (their libraries have a "
                             "transformer scheme); ModelOpt and XNNPACK quantize every family alike")
        if self.backend == "onnxruntime" and self.preset is not None:
            raise ValueError("'preset' applies to backend openvino only; use 'scheme' for onnxruntime")
        if self.backend != "openvino" and self.bias_correction is not None:
            raise ValueError("'bias_correction' applies to backend openvino only (ONNX Runtime's quantize_static "
                             "has no bias correction)")
        return self


class ExportConfig(StageBase):
    type: Literal["export"]
    format: Literal["onnx", "executorch"] = Field(
        "onnx", description="onnx: torch.onnx export; executorch: torch.export lowered to XNNPACK, a .pte "
                            "(compress[mobile])")
    opset: int = Field(17, ge=13, le=23, description="ONNX opset (format onnx)")
    parity_atol: float = Field(1e-3, gt=0, le=10, description="max |onnx - torch| allowed, relative to max |torch|")

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.format == "executorch" and "opset" in self.model_fields_set:
            raise ValueError("'opset' applies to format onnx only")
        return self


class CompileConfig(StageBase):
    type: Literal["compile"]
    target: str = Field(description="a name from `compress targets`, or a path to a target .yaml")
    inference_precision: Literal["f32", "bf16", "f16"] | None = Field(
        None, description="OpenVINO only: override the target's precision for non-INT8 layers"
    )


CANDIDATES = ("fp32", "bf16", "fp16", "int8", "int8_fallback")


class ChooseConfig(StageBase):
    type: Literal["choose"]
    target: str = Field(description="a name from `compress targets`, or a path to a target .yaml")
    candidates: list[Literal[CANDIDATES]] | None = Field(  # type: ignore[valid-type]
        None, min_length=1, description="precisions to build, validate and time on the target; default: every "
                                        "candidate the target declares")
    accuracy_control: AccuracyControl = Field(
        default_factory=AccuracyControl, description="the int8_fallback candidate: INT8 with the most sensitive "
                                                     "layers kept in float until the drop is within max_drop")
    objective: Literal["latency", "size"] = Field(
        "latency", description="among the candidates that pass every gate: latency ships the fastest (of those "
                               "as fast within the 95% interval, the most accurate); size the smallest")

    @field_validator("candidates")
    @classmethod
    def _unique(cls, candidates: list[str] | None) -> list[str] | None:
        if candidates is not None and len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates are listed twice: {candidates}")
        return candidates


class DistillConfig(Strict):
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss (1 - alpha: the label loss)")


class FinetuneConfig(Strict):
    epochs: int = Field(1, ge=1, le=1000)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning rate over the steps")
    batch_size: int = Field(64, ge=1, le=4096)
    bn_recalibration: int = Field(0, ge=0, le=100_000, description="batches of training data to re-estimate "
                                  "BatchNorm statistics on before training (pruning leaves them stale)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="for the label loss")
    distill: DistillConfig | None = Field(None, description="knowledge distillation from the unpruned FP32 model")
    eval_samples: int = Field(500, ge=1, le=MAX_SAMPLES, description="eval samples for the per-epoch metric")


class DistributedFinetune(FinetuneConfig):
    devices: int = Field(1, ge=1, le=512, description="processes to train in on each node (torch.distributed DDP, "
                         "launched with torchrun, gloo backend, CPU); 1 with nodes 1: train in the pipeline's process")
    nodes: int = Field(1, ge=1, le=64, description="machines to train on, `devices` processes each: Ray places one "
                       "torchrun per node (a STRICT_SPREAD placement group) and torchrun's c10d rendezvous joins them "
                       "(needs compress[ray] and a Ray cluster whose nodes see the recipe's files at the same paths)")
    ray: str = Field("auto", description="with nodes > 1: the Ray cluster, auto (ray start on this machine), "
                     "host:port or ray://host:port")

    @model_validator(mode="after")
    def _split(self) -> DistributedFinetune:
        world = self.devices * self.nodes
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} is the global batch: it must split evenly over "
                             f"devices x nodes = {world} processes (use a multiple of {world})")
        return self

    @property
    def distributed(self) -> bool:
        return self.devices * self.nodes > 1


class PruneFinetune(DistributedFinetune):
    """Fine-tuning after pruning (the defaults of FinetuneConfig)."""


class PruneTarget(Strict):
    macs: float | None = Field(None, gt=0, lt=1, description="keep at most this fraction of the MACs")
    latency_ms: float | None = Field(None, gt=0, description="p50 at most this, on the recipe's target runtime")
    speedup: float | None = Field(None, gt=1, le=1000, description="at least this vs unpruned, on the target runtime")

    @model_validator(mode="after")
    def _one(self) -> PruneTarget:
        if sum(v is not None for v in (self.macs, self.latency_ms, self.speedup)) != 1:
            raise ValueError("give exactly one of macs, latency_ms, speedup")
        return self


class SensitivityConfig(Strict):
    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)
    samples: int = Field(256, ge=1, le=MAX_SAMPLES, description="eval samples per measurement")


class PruneConfig(StageBase):
    type: Literal["prune"]
    method: Literal["channel", "unstructured", "2:4"] = Field(
        "channel", description="channel: structured (Torch-Pruning, smaller dense layers); unstructured: "
                               "magnitude sparsity; 2:4: semi-structured sparsity for sparse GPU kernels")
    ratio: float | None = Field(None, ge=0, lt=1, description="channel: fraction of channels removed; "
                                                               "unstructured: fraction of weights zeroed")
    target: PruneTarget | None = Field(None, description="prune iteratively until this budget is met (channel)")
    importance: Literal["l1", "l2", "taylor", "random"] = "l1"
    scope: Literal["global", "per_layer"] = "per_layer"
    round_to: int | None = Field(8, ge=1, le=1024, description="channel counts become multiples of this")
    steps: int = Field(10, ge=1, le=100, description="iterative steps when pruning to a target")
    max_ratio: float = Field(0.9, gt=0, lt=1, description="never remove more than this fraction of a layer")
    ignore: list[str] = Field(default_factory=list, description="module names to leave alone (e.g. the head)")
    finetune: PruneFinetune | None = None
    sensitivity: SensitivityConfig | None = Field(None, description="per-layer scan written into the report")

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        if self.method == "2:4":
            if self.ratio is not None or self.target is not None:
                raise ValueError("method '2:4' fixes the sparsity at 50%; drop 'ratio' and 'target'")
        elif (self.ratio is None) == (self.target is None):
            raise ValueError("give exactly one of 'ratio' or 'target'")
        if self.target is not None and self.method != "channel":
            raise ValueError("'target' budgets apply to method 'channel' (only structured pruning changes cost)")
        if self.method != "channel" and (self.importance not in ("l1",) or self.round_to != 8):
            raise ValueError("'importance' and 'round_to' apply to method 'channel'; other methods use magnitude")
        return self


class QatFinetune(DistributedFinetune):
    """Fine-tuning with fake-quant inserted: gentler defaults than after pruning."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0, le=10)


class QatConfig(StageBase):
    type: Literal["qat"]
    backend: Literal["openvino", "onnxruntime", "tensorrt"] = Field(
        description="openvino: NNCF fake-quant -> OpenVINO IR; onnxruntime: NNCF fake-quant -> ONNX QDQ; tensorrt: "
                    "NNCF fake-quant with signed activations -> TensorRT-style QDQ (int8, zero-point 0)")
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES,
                                description="calibration samples that initialise the quantizer ranges (default 300)")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="performance: symmetric activations; mixed: asymmetric activations")
    ignore: list[str] = Field(default_factory=list, description="module names to keep in float")
    fold_bn: bool = Field(True, description="fold BatchNorm into the preceding conv before inserting fake-quant "
                                            "(the deployed form; the runtimes fold it anyway)")
    freeze_bn_after: int | None = Field(None, ge=0, le=10_000_000,
                                        description="steps after which BatchNorm statistics stop updating "
                                                    "(with fold_bn: false)")
    freeze_quantizers_after: int | None = Field(None, ge=0, le=10_000_000,
                                                description="steps after which the quantizer ranges stop training")
    finetune: QatFinetune = Field(default_factory=QatFinetune)

    @model_validator(mode="after")
    def _check(self) -> QatConfig:
        if self.freeze_bn_after is not None and self.fold_bn:
            raise ValueError("'freeze_bn_after' needs 'fold_bn: false' (folded BatchNorm has no statistics to freeze)")
        if self.backend in ("onnxruntime", "tensorrt") and self.preset != "performance":
            raise ValueError("'preset' applies to backend openvino only (QDQ export is symmetric)")
        return self


StageConfig = Annotated[PruneConfig | QuantizeConfig | QatConfig | ExportConfig | CompileConfig | ChooseConfig,
                        Field(discriminator="type")]
STAGE_TYPES = ("prune", "quantize", "qat", "export", "compile", "choose")


# ---------------------------------------------------------------- latency, recipe
class LatencyConfig(Strict):
    threads: int | None = Field(None, ge=1, le=512, description="default: the target's (or 2)")
    batch: int | None = Field(None, ge=1, le=4096, description="default: the target's (or 1)")
    warmup: int = Field(10, ge=0, le=100_000)
    runs: int = Field(50, ge=1, le=1_000_000, description="timed calls per side in the first 5 paired rounds")
    max_seconds: float = Field(30.0, gt=0, le=86_400, description="timing budget per artifact: paired rounds "
                               "stop when it is spent, even if the speed-up's interval is still wide")
    rel_precision: float = Field(0.1, gt=0, le=10, description="paired rounds stop once the 95% interval of the "
                                 "speed-up is narrower than this fraction of it (or excludes every min_speedup)")


BUILTIN_METRICS = ("top1", "top5", "top1_agreement", "cosine")


class MetricConfig(Strict):
    function: str | None = Field(
        None, description="file.py:callable; a function(outputs, targets) -> dict over the whole eval set, "
                          "or a class with update(outputs, targets) per batch and compute() -> dict")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a metric class")
    primary: str | None = Field(
        None, description="figure for deltas and gates; default top1 with labels, else agreement with FP32")
    higher_is_better: bool = True

    @model_validator(mode="after")
    def _check(self) -> MetricConfig:
        if self.function is None:
            if self.primary is not None and self.primary not in BUILTIN_METRICS:
                raise ValueError(f"primary '{self.primary}' is not a built-in metric ({', '.join(BUILTIN_METRICS)}); "
                                 "give 'function' for your own")
            if not self.higher_is_better:
                raise ValueError("'higher_is_better' applies to a user metric 'function' only")
            if self.kwargs:
                raise ValueError("'kwargs' applies to a user metric 'function' only")
        elif ":" not in self.function:
            raise ValueError("function must look like 'path/to/file.py:callable'")
        return self


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig
    data: DataConfig
    stages: list[StageConfig] = Field(min_length=1)
    metric: MetricConfig = Field(default_factory=MetricConfig)
    gates: Gates = Field(default_factory=Gates)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list) -> list:
        seen: set[str] = set()
        for stage in stages:
            if stage.name is not None:
                if stage.name in seen:
                    raise ValueError(f"stage name '{stage.name}' is used twice")
                seen.add(stage.name)
        return stages


# ---------------------------------------------------------------- loading with good errors
def _format_loc(loc: tuple) -> tuple[str, list]:
    """('stages', 1, 'quantize', 'method') -> ('stages[1].method', ['stages', 1, 'method'])."""
    parts: list = []
    text = ""
    previous = None
    for item in loc:
        if isinstance(item, int):
            parts.append(item)
            text += f"[{item}]"
        elif previous is not None and isinstance(previous, int) and parts[:1] == ["stages"] \
                and len(parts) == 2 and item in STAGE_TYPES:
            pass  # the discriminator tag pydantic adds
        elif item.startswith("function-") or item in ("literal[...]",):
            pass
        else:
            parts.append(item)
            text += f".{item}" if text else item
        previous = item
    return text or "(top level)", parts


def _line_of(node: yaml.Node | None, parts: list) -> int | None:
    """1-based line of the YAML node at `parts`, or of the deepest parent that exists."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                key = next((k for k, v in node.value if getattr(k, "value", None) == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _message(err: dict) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"got {err.get('input')!r}; allowed: {ctx.get('expected')}"
    if kind == "union_tag_invalid":
        return f"unknown stage type {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"each stage needs a 'type'; allowed: {', '.join(STAGE_TYPES)}"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _hint(err: dict, path: str) -> str | None:
    if err["type"] == "extra_forbidden":
        return "Remove it or check its spelling against the schema in README.md."
    return None


def parse_recipe(data: Any, *, source: str = "<recipe>", node: yaml.Node | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError("the recipe must be a YAML mapping (key: value) at the top level", where=source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        path, parts = _format_loc(tuple(err["loc"]))
        line = _line_of(node, parts)
        where = f"{source}:{line}" if line else source
        more = f" ({len(errors) - 1} more problem(s) after this one)" if len(errors) > 1 else ""
        raise RecipeError(f"{path}: {_message(err)}{more}", where=where, hint=_hint(err, path)) from exc


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (PyYAML would silently keep the last value)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (merge keys `<<` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first_line
                except TypeError:
                    continue  # unhashable: the base class reports it
                if seen:
                    raise DuplicateKeyError(None, None, f"duplicate key {key!r} (first on line {first_line[key]})",
                                            key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for line numbers), from one parse."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        found = path.is_file()
    except (OSError, ValueError):   # e.g. a name too long for the file system
        found = False
    if not found:
        raise RecipeError(f"recipe file not found: {str(path)[:300]}",
                          hint="Check the path, or start from recipes/quickstart.yaml.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read the recipe: {exc}", where=str(path)) from exc
    try:
        data, node = _parse_yaml(text)
    except DuplicateKeyError as exc:
        raise RecipeError(f"{exc.problem} in the YAML", where=f"{path}:{exc.problem_mark.line + 1}",
                          hint="Each key may appear once in a mapping; remove or merge the repeated one.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        if context:   # e.g. "expected a single document in the stream", "while parsing a flow sequence"
            problem = f"{context}, {problem}"
        raise RecipeError(f"YAML syntax error: {problem}", where=where) from exc
    except RecursionError:
        raise RecipeError("the YAML is nested too deeply to be a recipe", where=str(path)) from None
    return parse_recipe(data, source=str(path), node=node)


# ---------------------------------------------------------------- the files a recipe names
PATH_KEYS = ("weights", "path", "labels")       # plain paths
CALLABLE_KEYS = ("factory", "function")          # file.py:callable


def map_recipe_files(recipe: Any, fn) -> Any:
    """The raw recipe (YAML data) with every file it names replaced by `fn(field, file)`: the plain paths
    (weights, path, labels), the file part of file.py:callable (factory, function) and target YAML files.
    `field` is the dotted YAML path ("model.weights", "stages.1.finetune.data.path"). One table for every caller
    that moves a recipe (sweep reports, builds on other nodes)."""
    def walk(node, where: str):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                field = f"{where}.{key}" if where else str(key)
                if isinstance(value, str) and key in PATH_KEYS:
                    value = fn(field, value)
                elif isinstance(value, str) and key in CALLABLE_KEYS and ":" in value:
                    file, _, name = value.rpartition(":")
                    value = f"{fn(field, file)}:{name}"
                elif isinstance(value, str) and key == "target" and value.endswith((".yaml", ".yml")):
                    value = fn(field, value)
                else:
                    value = walk(value, field)
                out[key] = value
            return out
        if isinstance(node, list):
            return [walk(v, f"{where}.{i}") for i, v in enumerate(node)]
        return node

    return walk(recipe, "")
