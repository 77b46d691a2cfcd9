"""Schedulers by name: one table mapping the names users pick to diffusers scheduler classes and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import IP2PError


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    label: str
    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    edm: bool = False  # EDM schedulers drive continuous-sigma models (CosXL Edit); the others drive 0..999 timesteps


SCHEDULERS: dict[str, SchedulerSpec] = {
    spec.name: spec
    for spec in (
        SchedulerSpec("euler_a", "Euler ancestral", "EulerAncestralDiscreteScheduler"),
        SchedulerSpec("euler", "Euler", "EulerDiscreteScheduler"),
        SchedulerSpec("ddim", "DDIM", "DDIMScheduler"),
        SchedulerSpec("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
        SchedulerSpec(
            "dpmpp_2m_karras",
            "DPM++ 2M Karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        ),
        SchedulerSpec("unipc", "UniPC", "UniPCMultistepScheduler"),
        SchedulerSpec("lms", "LMS", "LMSDiscreteScheduler"),
        SchedulerSpec("heun", "Heun", "HeunDiscreteScheduler"),
        SchedulerSpec("pndm", "PNDM", "PNDMScheduler", {"skip_prk_steps": True}),
        SchedulerSpec("edm_euler", "EDM Euler", "EDMEulerScheduler", edm=True),
        SchedulerSpec(
            "edm_dpmpp_2m", "EDM DPM++ 2M", "EDMDPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, edm=True
        ),
    )
}


def scheduler_names(edm: bool | None = None) -> list[str]:
    return [n for n, s in SCHEDULERS.items() if edm is None or s.edm == edm]


def is_edm_config(config: Mapping[str, Any]) -> bool:
    """Whether a diffusers scheduler config (a model's own) is of an EDM scheduler, by the table's class names."""
    class_name = str(config.get("_class_name", ""))
    return any(s.edm for s in SCHEDULERS.values() if s.class_name == class_name)


def resolve_scheduler_name(name: str | None, edm_model: bool, auto: str | None = None) -> SchedulerSpec:
    """Check a user's scheduler name against the table and the model kind.

    ``None``/"auto" stands for ``auto``: the model family's default scheduler (``FamilySpec.default_scheduler``).
    """
    if name in (None, "", "auto"):
        if auto is None:
            raise IP2PError("Scheduler 'auto' means the model family's default; name a scheduler here, one of: "
                            f"{', '.join(scheduler_names(edm_model))}.")
        name = auto
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_").replace("+", "p")
    spec = SCHEDULERS.get(key)
    if spec is None:
        raise IP2PError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULERS)} (or 'auto').")
    if spec.edm != edm_model:
        kind = "CosXL Edit (EDM v-prediction)" if edm_model else "SD 1.5 / SDXL (discrete timesteps)"
        fitting = ", ".join(scheduler_names(edm_model))
        raise IP2PError(f"Scheduler {spec.name!r} does not fit a {kind} model. Use one of: {fitting}.")
    return spec


def make_scheduler(name: str | None, base_config: Mapping[str, Any], auto: str | None = None):
    """A fresh diffusers scheduler for one sampling run.

    ``base_config`` is the model's own scheduler config (betas, prediction type, sigma range); the spec adds only the
    options that define the named sampler, so a model's training schedule always carries over. ``auto``: what
    "auto" stands for (the model family's default scheduler).
    """
    import diffusers

    spec = resolve_scheduler_name(name, is_edm_config(base_config), auto)
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(dict(base_config), **spec.options)
