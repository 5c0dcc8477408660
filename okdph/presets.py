"""Named training configurations: the embedded demo, small studies (digits, mnist1d, real images on
the CPU with Fashion-MNIST: ``fmnist``), and the paper's settings.

A preset is a list of ``key=value`` overrides on top of ``TrainConfig()``; ``--set`` adds more.
The CIFAR presets reproduce the OKDPH reference commands (``src/OKDPH.sh``: methods.md 1.4) with
paper-mode OKDPH by default; ``--set method.mode=code`` gives the released code's behaviour.
``<data>-<arch>-okddip`` follow the official OKDDip code (methods.md 2) and ``<data>-<arch>-wml``
the documented WML defaults (methods.md 3), each for every CIFAR architecture, plus small
``digits-``/``mnist1d-`` versions of both.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from okdph.config import ConfigError, TrainConfig, apply_overrides


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: tuple[str, ...]


_PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, *overrides: str) -> None:
    _PRESETS[name] = Preset(name, description, overrides)


def list_presets() -> list[Preset]:
    return [_PRESETS[k] for k in sorted(_PRESETS)]


def preset_config(name: str) -> TrainConfig:
    """The TrainConfig of preset ``name``."""
    if name not in _PRESETS:
        # Listing every preset would make a line too long to read; one guess is enough.
        close = difflib.get_close_matches(name, list(_PRESETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; see `okdph presets` for all of them")
    return apply_overrides(TrainConfig(), list(_PRESETS[name].overrides))


# ---- embedded data (CPU-sized) -------------------------------------------------------------------
_DIGITS = (
    "data=digits",
    "model=cnn_digits",
    "model.width=32",
    "epochs=30",
    "batch_size=64",
    "num_students=2",
    "seed=0",
)
# Each network gets its own augmentation family, as OKDPH's reference pipelines do.
_DIGITS_VIEWS = "augment=shift,shift+scale,shift+noise"
register_preset(
    "demo",
    "OKDPH (paper mode) with two small CNNs on scikit-learn's digits; ~1 min on 2 CPU cores",
    "method=okdph",
    *_DIGITS,
    _DIGITS_VIEWS,
)
for _method in ("independent", "dml", "kdcl"):
    register_preset(
        f"digits-{_method}",
        f"{_method} with the demo's students, data and views",
        f"method={_method}",
        *_DIGITS,
        "augment=shift,shift+scale",
    )
register_preset(
    "digits-okdph-code",
    "the demo in reference-code mode (mean HWM, no HWM gradient)",
    "method=okdph",
    "method.mode=code",
    *_DIGITS,
    _DIGITS_VIEWS,
)

_MNIST1D = (
    "data=mnist1d",
    "model=cnn1d",
    "epochs=30",
    "batch_size=128",
    "num_students=2",
    "seed=0",
)
_MNIST1D_VIEWS = "augment=shift,shift+scale,shift+noise"
register_preset(
    "mnist1d",
    "OKDPH (paper mode) with two 1D CNNs on mnist1d (generated locally)",
    "method=okdph",
    *_MNIST1D,
    _MNIST1D_VIEWS,
)
for _method in ("independent", "dml", "kdcl"):
    register_preset(
        f"mnist1d-{_method}",
        f"{_method} with the mnist1d preset's students and views",
        f"method={_method}",
        *_MNIST1D,
        "augment=shift,shift+scale",
    )
register_preset(
    "mnist1d-okdph-code",
    "the mnist1d preset in reference-code mode",
    "method=okdph",
    "method.mode=code",
    *_MNIST1D,
    _MNIST1D_VIEWS,
)

# ---- Fashion-MNIST: real images on the CPU (docs/results/fashion-mnist.md) -----------------------
# ResNet-8 at the paper's ResNet-32 widths (16/32/64, BatchNorm, one input channel) on a class-
# balanced 1,000-image subset; batch 32 and 50 epochs give the students ~1,560 steps, enough to fit
# their training images with flips (train error 0.5-3%) on 2 CPU cores. Every network draws its own
# flips (one pipeline for every view, a stream per view), so shared-init students diverge while
# fitting almost as without augmentation; crops keep small ResNets from fitting. The test split
# (10,000 images, ~40% of a run's time if tested every epoch of the last quarter) is evaluated
# over the last tenth only: epochs 45-50, all in the final learning-rate phase.
_FMNIST = (
    "data=fashion_mnist",
    "data.train_subset=1000",
    "model=resnet8",
    "epochs=50",
    "batch_size=32",
    "eval_batch_size=256",
    "eval_test_from=0.9",
    "num_students=2",
    "seed=0",
    "augment=flip",
)
register_preset(
    "fmnist",
    "OKDPH (paper mode) with two ResNet-8s (16/32/64) on a class-balanced 1,000-image "
    "Fashion-MNIST subset, 50 epochs; ~3 min on 2 CPU cores",
    "method=okdph",
    *_FMNIST,
)
# The validation grid's base (make validate): one ResNet-8 per run at half the widths (8/16/32),
# trained alone, so that 32 runs and every measure of each fit the 2-hour budget on 2 CPU cores
# (a Hessian product costs about a quarter of one at 16/32/64); the grid varies lr, batch size,
# weight decay and augmentation around it.
register_preset(
    "fmnist-grid",
    "independent training of one ResNet-8 (8/16/32) on the fmnist data and schedule: the base of "
    "the Fashion-MNIST validation grid (make validate)",
    "method=independent",
    *_FMNIST,
    "num_students=1",
    "model.widths=8,16,32",
)
register_preset(
    "fmnist-quick",
    "the fmnist preset on 500 images for 10 epochs (~40 s on 2 CPU cores): smoke tests, demos",
    "method=okdph",
    *_FMNIST,
    "data.train_subset=500",
    "epochs=10",
)

# ---- the OKDPH paper's CIFAR settings (src/OKDPH.sh) ---------------------------------------------
_CIFAR = (
    "epochs=300",
    "batch_size=128",
    "num_students=2",
    "seed=42",
    "optim.lr=0.1",
    "optim.momentum=0.9",
    "optim.weight_decay=5e-4",
    "optim.milestones=0.5,0.75",
)
# Reference views: student 1, student 2, HWM. C10: hflip, cutout, RandAugment; C100: hflip+rot, ...
_CIFAR_VIEWS = {
    "cifar10": "augment=crop+flip,crop+flip+cutout,crop+randaugment",
    "cifar100": "augment=crop+flip+rot,crop+flip+cutout,crop+randaugment",
}
# dataset, arch, omega, beta, gamma, fusion interval (methods.md 1.4)
_REFERENCE = [
    ("cifar10", "resnet32", 0.8, 0.8, 0.5, "1_epoch"),
    ("cifar10", "vgg16", 0.3, 0.3, 1.0, "1_epoch"),
    ("cifar10", "densenet40_12", 0.8, 0.8, 0.5, "5_batch"),
    ("cifar10", "wrn_20_8", 0.8, 0.8, 0.5, "1_epoch"),
    ("cifar10", "resnet110", 0.8, 0.8, 0.5, "5_batch"),
    ("cifar100", "resnet32", 1.0, 0.5, 1.0, "5_batch"),
    ("cifar100", "vgg16", 0.3, 0.3, 1.0, "1_epoch"),
    ("cifar100", "densenet40_12", 1.0, 0.5, 0.5, "5_batch"),
    ("cifar100", "wrn_20_8", 0.5, 0.5, 0.5, "5_batch"),
    ("cifar100", "resnet110", 0.8, 0.8, 0.5, "5_batch"),
]
for _data, _arch, _omega, _beta, _gamma, _every in _REFERENCE:
    register_preset(
        f"{_data}-{_arch}",
        f"OKDPH on {_data.upper()} with {_arch}: omega {_omega}, beta {_beta}, gamma {_gamma}, "
        f"fusion every {_every.replace('_', ' ')} (reference settings, 300 epochs)",
        "method=okdph",
        f"data={_data}",
        f"model={_arch}",
        *_CIFAR,
        _CIFAR_VIEWS[_data],
        f"method.omega={_omega}",
        f"method.beta={_beta}",
        f"method.fusion_gamma={_gamma}",
        f"method.fusion_every={_every}",
    )

# The OKDPH paper's baselines on the same settings (src/baseline.sh): the students' views of the
# OKDPH preset, each method's own default initialisation. `okdph sweep --protocol matched` gives
# them OKDPH's init rule instead; `--protocol reference` one augmentation for every network.
for _data, _arch, *_ in _REFERENCE:
    _views = _CIFAR_VIEWS[_data].split("=", 1)[1].split(",")[:2]
    for _method in ("independent", "dml", "kdcl"):
        register_preset(
            f"{_data}-{_arch}-{_method}",
            f"{_method} on {_data.upper()} with {_arch}: OKDPH's schedule and student views, "
            "300 epochs",
            f"method={_method}",
            f"data={_data}",
            f"model={_arch}",
            *_CIFAR,
            "augment=" + ",".join(_views),
        )

# ---- OKDDip and WML ------------------------------------------------------------------------------
# OKDDip as the official code (methods.md 2): 3 peers + 1 leader sharing the early stages, one view
# for all of them, T = 3, alpha = 1, ramp over 80/300 of the run, Nesterov momentum.
_OKDDIP = ("method=okddip", "num_students=4", "optim.nesterov=true")
# WML (methods.md 3; unverified details are the method's documented defaults): three peers with
# heads at 1.0, 0.75 and 0.5 of the dense width, sharing the trunk.
_WML = ("method=wml", "num_students=3")
for _name, _base, _data_desc in (
    ("digits", _DIGITS, "the demo's CNNs on digits"),
    ("mnist1d", _MNIST1D, "1D CNNs on mnist1d"),
):
    register_preset(
        f"{_name}-okddip",
        f"OKDDip (3 peers + leader, shared first two conv blocks) with {_data_desc}",
        *_base,
        *_OKDDIP,
        "augment=shift",
    )
    register_preset(
        f"{_name}-wml",
        f"WML (3 peers, heads pruned to 1.0/0.75/0.5, shared trunk) with {_data_desc}",
        *_base,
        *_WML,
        "augment=shift",
    )
    register_preset(
        f"{_name}-sam",
        f"adaptive SAM (rho 0.05, label smoothing 0.1), students trained apart, {_data_desc}",
        *_base,
        "method=sam",
        "augment=shift,shift+scale",
    )

    register_preset(
        f"{_name}-swa",
        f"SWA (averaged copies from 80% of the run, SWA schedule), students trained apart, "
        f"{_data_desc}",
        *_base,
        "method=swa",
        "augment=shift,shift+scale",
    )
    register_preset(
        f"{_name}-ema",
        f"EMA mean teachers (decay 0.99, consistency 10), one per student, {_data_desc}",
        *_base,
        "method=ema",
        "augment=shift,shift+scale",
    )

# SAM as the OKDPH repository's src/13_SAM.py: adaptive, label smoothing 0.1, one view per network
# (hflip; hflip+rot on CIFAR-100), rho 0.1 on CIFAR-10 and 0.05 on CIFAR-100.
_SAM_CIFAR = {
    "cifar10": ("method.rho=0.1", "augment=crop+flip"),
    "cifar100": ("method.rho=0.05", "augment=crop+flip+rot"),
}
for _data in ("cifar10", "cifar100"):
    for _arch in ("resnet32", "resnet110", "wrn_20_8", "vgg16", "densenet40_12"):
        register_preset(
            f"{_data}-{_arch}-sam",
            f"adaptive SAM on {_data.upper()} with {_arch} (src/13_SAM.py settings, 300 epochs)",
            f"data={_data}",
            f"model={_arch}",
            *_CIFAR,
            "method=sam",
            *_SAM_CIFAR[_data],
        )
        # SWA and EMA as src/12_SWA.py and src/11_EMA.py (baseline.sh), the reference's one
        # augmentation per network. Each student with its average is one reference run; two
        # students per run, as every other preset, so that every method fits every preset.
        for _control, _what in (
            ("swa", "SWA (src/12_SWA.py: averaged from epoch 241, SWA learning-rate schedule)"),
            ("ema", "EMA mean teacher (src/11_EMA.py: decay 0.99, MSE consistency 10)"),
        ):
            register_preset(
                f"{_data}-{_arch}-{_control}",
                f"{_what} on {_data.upper()} with {_arch}, 300 epochs",
                f"data={_data}",
                f"model={_arch}",
                *_CIFAR,
                f"method={_control}",
                _SAM_CIFAR[_data][1],
            )
        # The official branch VGG (vgg_GL.py) keeps torchvision's dropout 0.5 in its classifier.
        _extra = ("model.dropout=0.5",) if _arch == "vgg16" else ()
        register_preset(
            f"{_data}-{_arch}-okddip",
            f"OKDDip on {_data.upper()} with {_arch} branches: 3 peers + leader, T 3, "
            f"Nesterov (official settings, 300 epochs)",
            f"data={_data}",
            f"model={_arch}",
            *_CIFAR,
            *_OKDDIP,
            *_extra,
            "augment=crop+flip",
        )
        register_preset(
            f"{_data}-{_arch}-wml",
            f"WML on {_data.upper()} with {_arch}: 3 peers sharing the trunk, heads pruned to "
            f"1.0/0.75/0.5 (OKDPH schedule, 300 epochs)",
            f"data={_data}",
            f"model={_arch}",
            *_CIFAR,
            *_WML,
            "augment=crop+flip",
        )
