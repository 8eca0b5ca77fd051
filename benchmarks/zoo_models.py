"""The model catalogue shared by ``benchmarks/zoo.py --list`` and ``tests/test_zoo.py``.

Every torchvision classification, segmentation, video, detection and optical-flow model (``weights=None``,
``weights_backbone=None``) and the smallest variant of every timm family (``pretrained=False``; one per timm
model module, ``TIMM_SKIPPED`` says which are left out and why), each
with the smallest input it accepts (or a size override where the constructor allows one), so that a whole
sweep stays cheap on a small CPU box.

Detection models take a list of images (``input_shape`` is one image's ``C, H, W``), run at 128x128
(``min_size=max_size=128``; SSD resizes to its own fixed size), keep every box (score threshold 0) and
have 3 classes (Keypoint R-CNN: 2), so that outputs are comparable; RAFT takes two frames.

    >>> spec = get_spec("resnet18")
    >>> spec.source, spec.input_shape
    ('torchvision', (1, 3, 64, 64))
    >>> model, inputs = build(spec)
    >>> get_spec("fasterrcnn_resnet50_fpn").source
    'detection'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["HF_EXTRA", "HF_FAMILIES", "HF_SKIPPED", "HF_TINY", "LISTS", "TIMM_FAMILIES", "TIMM_SKIPPED",
           "Spec", "build", "detection_targets", "get_spec", "hf_config", "specs", "timm_family_modules"]

IMG = (1, 3, 64, 64)
VIDEO = (1, 3, 8, 64, 64)


@dataclass(frozen=True)
class Spec:
    """One model of the zoo: where it comes from, how to build it, and its example input."""

    name: str                      # unique id: the torchvision name, or "timm/<name>"
    source: str                    # torchvision | segmentation | video | detection | flow | timm | hf
    model_name: str                # name passed to the constructor
    input_shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = ""               # timm family label; hf: the transformers model_type


# Smallest input each torchvision model accepts, when it is not IMG / VIDEO (and why).
_TV_INPUT = {
    "inception_v3": (1, 3, 80, 80),        # valid convs and 3x3/2 pools need >= 75
    "maxvit_t": (1, 3, 224, 224),          # partition size 7 is fixed: the grid must be 7 * 2**k
    "vit_h_14": (1, 3, 56, 56),            # image_size must be a multiple of the patch (14)
}
# Constructor overrides (only when weights=None allows them): a smaller fixed image size.
_TV_KWARGS = {
    "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64}, "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64}, "vit_h_14": {"image_size": 56},
}
_VIDEO_INPUT = {
    "s3d": (1, 3, 16, 224, 224),           # AvgPool3d((2, 7, 7)) after a /8 x /32 backbone
    "mvit_v1_b": (1, 3, 16, 224, 224),     # spatial/temporal size fixed by the builder
    "mvit_v2_s": (1, 3, 16, 224, 224),
}
_VIDEO_KWARGS: dict[str, dict[str, Any]] = {}
DETECTION_IMG = (3, 128, 128)
FLOW = (1, 3, 128, 128)                    # RAFT needs H, W >= 128 (its correlation pyramid)

# timm: family -> (smallest variant, input shape, constructor kwargs).
TIMM_FAMILIES: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    "resnet": ("resnet18", IMG, {}),
    "resnext": ("resnext26ts", IMG, {}),
    "efficientnet": ("efficientnet_b0", IMG, {}),
    "mobilenetv3": ("mobilenetv3_small_050", IMG, {}),
    "regnet": ("regnetx_002", IMG, {}),
    "convnext": ("convnext_atto", IMG, {}),
    "vit": ("vit_tiny_patch16_224", IMG, {"img_size": 64}),
    "deit": ("deit_tiny_patch16_224", IMG, {"img_size": 64}),
    "swin": ("swin_tiny_patch4_window7_224", IMG, {"img_size": 64, "window_size": 2}),
    "beit": ("beit_base_patch16_224", IMG, {"img_size": 64}),
    "levit": ("levit_128s", IMG, {"img_size": 64}),
    "mixer": ("mixer_s32_224", IMG, {"img_size": 64}),
    "poolformer": ("poolformer_s12", IMG, {}),
    "maxvit": ("maxvit_pico_rw_256", IMG, {"img_size": 64}),
    "efficientformer": ("efficientformer_l1", (1, 3, 224, 224), {}),  # attention biases fixed at 7x7
    "repvgg": ("repvgg_a0", IMG, {}),
    "dla": ("dla46_c", IMG, {}),
    "dpn": ("dpn48b", IMG, {}),
    "hrnet": ("hrnet_w18_small", IMG, {}),
    "cspnet": ("cspresnet50", IMG, {}),
    "ghostnet": ("ghostnet_050", IMG, {}),
    "rexnet": ("rexnet_100", IMG, {}),
    "nfnet": ("nf_resnet26", IMG, {}),
    "coatnet": ("coatnet_pico_rw_224", IMG, {"img_size": 64}),
    "edgenext": ("edgenext_xx_small", IMG, {}),
    "fastvit": ("fastvit_t8", IMG, {}),
    "mobilevit": ("mobilevit_xxs", IMG, {}),
    "xcit": ("xcit_nano_12_p16_224", IMG, {"img_size": 64}),
    "eva": ("eva02_tiny_patch14_224", (1, 3, 56, 56), {"img_size": 56}),
    "convmixer": ("convmixer_768_32", IMG, {}),
    # every other timm model module (timm.models._registry), its variant with the fewest parameters that
    # builds with pretrained=False and runs a forward (64x64 or img_size=64 when it takes it, else its
    # default input); timm's test_* models are left out (not architectures anyone deploys)
    "byoanet": ("halonet_h1", (1, 3, 256, 256), {}),  # halo attention: the blocks need 256 (8x8 at stride 32)
    "cait": ("cait_xxs24_384", IMG, {"img_size": 64}),
    "coat": ("coat_tiny", IMG, {"img_size": 64}),
    "convit": ("convit_tiny", IMG, {"img_size": 64}),
    "cpubone": ("cpubone_nano", IMG, {}),
    "crossvit": ("crossvit_tiny_240", IMG, {}),
    "csatv2": ("csatv2", IMG, {}),
    "cspnext": ("cspnext_tiny", IMG, {}),
    "davit": ("davit_tiny", IMG, {}),
    "densenet": ("densenet121", IMG, {}),
    "efficientformer_v2": ("efficientformerv2_s0", IMG, {"img_size": 64}),
    "efficientvim": ("efficientvim_m1", IMG, {}),
    "efficientvit_mit": ("efficientvit_b0", IMG, {}),
    "efficientvit_msra": ("efficientvit_m0", IMG, {}),
    "fasternet": ("fasternet_t0", IMG, {}),
    "focalnet": ("focalnet_tiny_srf", IMG, {}),
    "gcvit": ("gcvit_xxtiny", IMG, {"img_size": 64}),
    "gemma4_vit": ("gemma4_vit_167m", IMG, {}),
    "hardcorenas": ("hardcorenas_b", IMG, {}),
    "hgnet": ("hgnetv2_b0", IMG, {}),
    "hiera": ("hiera_tiny_224", IMG, {"img_size": 64}),
    "hieradet_sam2": ("sam2_hiera_tiny", IMG, {}),
    "iformer": ("iformer_t", IMG, {}),
    "inception_next": ("inception_next_atto", IMG, {}),
    "inception_resnet_v2": ("ens_adv_inception_resnet_v2", (1, 3, 299, 299), {}),
    "inception_v3": ("adv_inception_v3", (1, 3, 299, 299), {}),
    "inception_v4": ("inception_v4", (1, 3, 299, 299), {}),
    "lcnetv2": ("lcnetv2_small", IMG, {}),
    "lowformer": ("lowformer_b0", IMG, {}),
    "mambaout": ("mambaout_femto", IMG, {}),
    "mobilenetv5": ("mobilenetv5_base", IMG, {}),
    "mvitv2": ("mvitv2_tiny", IMG, {}),
    "naflexvit": ("naflexvit_base_patch16_parfac_gap", IMG, {}),
    "nasnet": ("nasnetalarge", IMG, {}),
    "nest": ("jx_nest_tiny", IMG, {"img_size": 64}),
    "nextvit": ("nextvit_small", IMG, {}),
    "pit": ("pit_ti_224", IMG, {"img_size": 64}),
    "pnasnet": ("pnasnet5large", IMG, {}),
    "pvt_v2": ("pvt_v2_b0", IMG, {}),
    "qwen3_vit": ("qwen3_vit_88m", IMG, {}),
    "rdnet": ("rdnet_tiny", IMG, {}),
    "repghost": ("repghostnet_050", IMG, {}),
    "repvit": ("repvit_m1", IMG, {}),
    "res2net": ("res2next50", IMG, {}),
    "resnest": ("resnest14d", IMG, {}),
    "resnetv2": ("resnetv2_18", IMG, {}),
    "selecsls": ("selecsls42", IMG, {}),
    "senet": ("legacy_seresnet18", IMG, {}),
    "sequencer": ("sequencer2d_s", IMG, {}),
    "shvit": ("shvit_s1", IMG, {}),
    "sknet": ("skresnet18", IMG, {}),
    "starnet": ("starnet_s050", IMG, {}),
    "swiftformer": ("swiftformer_xs", IMG, {}),
    "swin_transformer_v2": ("swinv2_tiny_window16_256", IMG, {"img_size": 64}),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", IMG, {"img_size": 64}),
    "tiny_vit": ("tiny_vit_5m_224", IMG, {}),
    "tnt": ("tnt_s_legacy_patch16_224", IMG, {"img_size": 64}),
    "tresnet": ("tresnet_m", IMG, {}),
    "twins": ("twins_svt_small", IMG, {}),
    "vgg": ("vgg11", IMG, {}),
    "visformer": ("visformer_tiny", IMG, {"img_size": 64}),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", IMG, {"img_size": 64}),
    "vision_transformer_relpos": ("vit_srelpos_small_patch16_224", IMG, {"img_size": 64}),
    "vision_transformer_sam": ("samvit_base_patch16_224", IMG, {}),
    "vitamin": ("vitamin_small_224", IMG, {"img_size": 64}),
    "volo": ("volo_d1_224", IMG, {"img_size": 64}),
    "vovnet": ("ese_vovnet19b_slim_dw", IMG, {}),
    "xception": ("legacy_xception", IMG, {}),
    "xception_aligned": ("xception41p", IMG, {}),
}

# timm model modules (families) with no entry above, and why. Every other module of
# ``timm.models._registry._module_to_models`` (timm 1.0.31) has one: the older family labels above stand for
# their modules (resnext, repvgg -> byobnet; deit -> deit; mixer -> mlp_mixer; poolformer -> metaformer;
# maxvit, coatnet -> maxxvit; swin -> swin_transformer; vit -> vision_transformer).
TIMM_SKIPPED: dict[str, str] = {
    "deepseek_vit": "smallest variant deepseek_vit_412m has 412 M parameters (1.6 GB in fp32; verify holds the "
                    "original, its masked copy and the pruned model): past a whole-zoo sweep on a small CPU box",
}

# The candidates the entries above were picked from: for each module, its variants sorted by parameter
# count (built on the meta device), timm's test_* models left out; the first whose forward runs at 64x64,
# then with img_size=64, then at its pretrained_cfg input size, with pretrained=False, is the entry.


def timm_family_modules() -> dict[str, list[str]]:
    """timm's model modules (one per family) and their registered model names.

        >>> mods = timm_family_modules()
        >>> "resnet18" in mods["resnet"]
        True
    """
    from timm.models._registry import _module_to_models
    return {m: sorted(n) for m, n in sorted(_module_to_models.items())}


def _torchvision(module_name: str) -> list[str]:
    import torchvision
    mod = torchvision.models if module_name == "" else getattr(torchvision.models, module_name)
    return sorted(torchvision.models.list_models(module=mod))


def _tv_specs() -> list[Spec]:
    return [Spec(n, "torchvision", n, _TV_INPUT.get(n, IMG), _TV_KWARGS.get(n, {})) for n in _torchvision("")]


def _seg_specs() -> list[Spec]:
    # weights_backbone defaults to ImageNet weights (a download): random init like everything else
    return [Spec(n, "segmentation", n, IMG, {"weights_backbone": None}) for n in _torchvision("segmentation")]


def _video_specs() -> list[Spec]:
    return [Spec(n, "video", n, _VIDEO_INPUT.get(n, VIDEO), _VIDEO_KWARGS.get(n, {}))
            for n in _torchvision("video")]


def _detection_specs() -> list[Spec]:
    out = []
    for n in _torchvision("detection"):
        kw: dict[str, Any] = {"weights_backbone": None}
        if not n.startswith("ssd"):  # SSD resizes to its own fixed size (300 / 320)
            kw.update(min_size=DETECTION_IMG[1], max_size=DETECTION_IMG[2])
        kw["box_score_thresh" if "rcnn" in n else "score_thresh"] = 0.0  # keep every box: comparable outputs
        # few classes: with 91 near-uniform random class scores, top-k/NMS order near-ties by float noise
        kw["num_classes"] = 2 if n.startswith("keypoint") else 3
        out.append(Spec(n, "detection", n, DETECTION_IMG, kw))
    return out


def _flow_specs() -> list[Spec]:
    return [Spec(n, "flow", n, FLOW) for n in _torchvision("optical_flow")]


def _timm_specs() -> list[Spec]:
    return [Spec(f"timm/{n}", "timm", n, shape, kw, fam) for fam, (n, shape, kw) in TIMM_FAMILIES.items()]


from zoo_hf import HF_EXTRA, HF_FAMILIES, HF_SKIPPED, HF_TINY, build_hf, hf_config, hf_specs  # noqa: E402

LISTS = {"torchvision": _tv_specs, "segmentation": _seg_specs, "video": _video_specs,
         "detection": _detection_specs, "flow": _flow_specs, "timm": _timm_specs, "hf": hf_specs}


def specs(which: str = "all") -> list[Spec]:
    """The specs of one list (``all`` or a key of ``LISTS``). ``all`` is the vision zoo that
    ``benchmarks/zoo.py`` sweeps (positional image inputs); ``hf`` (keyword inputs, ``fxprune.Inputs``) is
    swept by ``benchmarks/hf_sweep.py``."""
    if which == "all":
        return [s for k, f in LISTS.items() if k != "hf" for s in f()]
    return LISTS[which]()


def get_spec(name: str) -> Spec:
    """The spec named ``name`` (a torchvision name, ``timm/<name>`` or ``hf/<model_type>``); unknown names get
    IMG input."""
    for s in specs("hf" if name.startswith("hf/") else "all"):
        if s.name == name:
            return s
    if name.startswith("timm/"):
        return Spec(name, "timm", name[5:], IMG)
    return Spec(name, "torchvision", name, IMG)


def _spread_scores(model) -> None:
    """At their default init, one-stage detectors score every anchor alike (sigmoid(bias) = 0.01): top-k and
    NMS then order near-ties by float noise, and masked-original vs pruned outputs differ in order only.
    Spread the class logits so that comparing outputs is meaningful."""
    from torch import nn
    for name, m in model.named_modules():
        if ("cls_logits" in name or "classification_head.module_list" in name) and isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.05)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build(spec: Spec, seed: int = 0):
    """``(model in eval mode, example inputs tuple)`` with a fixed seed; an ``hf`` spec gets an
    ``fxprune.Inputs`` (token ids and ``use_cache=False``, or the family's own inputs)."""
    import torch
    torch.manual_seed(seed)
    if spec.source == "hf":
        return build_hf(spec, seed)
    if spec.source == "timm":
        import timm
        model = timm.create_model(spec.model_name, pretrained=False, **spec.kwargs)
    else:
        import torchvision
        model = torchvision.models.get_model(spec.model_name, weights=None, **spec.kwargs)
    g = torch.Generator().manual_seed(1)
    if spec.source == "detection":
        _spread_scores(model)
        return model.eval(), ([torch.rand(*spec.input_shape, generator=g)],)
    if spec.source == "flow":
        return model.eval(), tuple(torch.randn(*spec.input_shape, generator=g) for _ in range(2))
    x = torch.randn(*spec.input_shape, generator=g)
    return model.eval(), (x,)


def detection_targets(spec: Spec, images) -> list[dict[str, Any]]:
    """One ground-truth box per image for a detection model's training forward (masks and keypoints for
    Mask / Keypoint R-CNN), so that every loss term is computed."""
    import torch
    out = []
    for img in images:
        h, w = img.shape[-2:]
        t: dict[str, Any] = {"boxes": torch.tensor([[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]]),
                             "labels": torch.tensor([1])}
        if "maskrcnn" in spec.name:
            mask = torch.zeros(1, h, w, dtype=torch.uint8)
            mask[:, int(0.3 * h):int(0.8 * h), int(0.2 * w):int(0.6 * w)] = 1
            t["masks"] = mask
        if "keypointrcnn" in spec.name:
            k = torch.linspace(0.15, 0.65, 17)
            t["keypoints"] = torch.stack([k * w, (k + 0.2) * h, torch.ones(17)], 1)[None]
        out.append(t)
    return out
