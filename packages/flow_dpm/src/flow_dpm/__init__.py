"""flow_dpm: Flow-DPM-Solver and reference samplers for flow-matching diffusion models.

The flow convention (the only one in this package):

    x_t = (1 - t) * x0 + t * eps,   t in [0, 1],  t = 1 is noise eps ~ N(0, I), t = 0 is data,
    velocity v = eps - x0           (Sana's and diffusers' flow convention),
    x0 = x_t - t * v,               eps = x_t + (1 - t) * v.

Every function takes `t` as a float tensor in [0, 1] (never integer indices scaled by 1000). Models that take
`1000 * t` (Sana) are adapted with `scale_time`.

Shape glossary: B batch, C pixel channels (3), H, W pixel size, C_z latent channels, h, w latent size (H/f, W/f),
f spatial compression, p patch size, N image tokens (h*w/p²), D model width, L text tokens, D_txt text width,
nh heads, hd head width, K timesteps in a schedule.

Usage:

    solver = FlowDPMSolver(order=2, flow_shift=3.0)     # Sana's official settings
    x0 = solver.sample(velocity, noise, num_steps=20)   # velocity(x, t): x like noise, t (B,) in [0, 1]
"""

from flow_dpm.adapters import from_edm_denoiser, from_eps_model, from_x0_model, scale_time
from flow_dpm.guidance import BranchModel, cfg, cfg_pag, from_fields, guided
from flow_dpm.objectives import add_noise, flow_matching_loss, sample_t, velocity_target
from flow_dpm.samplers import RECOMMENDED, FlowDPMSolver, FlowEuler, FlowHeun
from flow_dpm.scheduler import FlowDPMScheduler
from flow_dpm.solvers import VelocityField, sample_euler, sample_flow_dpm, sample_heun
from flow_dpm.timesteps import flow_timesteps, half_log_snr, shift_time

__version__ = "0.1.0"

__all__ = (
    # samplers (frozen option objects)
    "FlowDPMSolver",
    "FlowEuler",
    "FlowHeun",
    "RECOMMENDED",
    # stateless sampling functions and time grids
    "sample_flow_dpm",
    "sample_euler",
    "sample_heun",
    "flow_timesteps",
    "shift_time",
    "half_log_snr",
    "VelocityField",
    # guidance
    "guided",
    "cfg",
    "cfg_pag",
    "from_fields",
    "BranchModel",
    # adapters for other models
    "scale_time",
    "from_x0_model",
    "from_eps_model",
    "from_edm_denoiser",
    # training objectives
    "add_noise",
    "velocity_target",
    "flow_matching_loss",
    "sample_t",
    # diffusers interoperability
    "FlowDPMScheduler",
)
