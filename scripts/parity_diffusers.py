#!/usr/bin/python3
"""Regenerates spec/fixtures/parity-diffusers.json by running diffusers' schedulers.

Usage (from the repository root; see spec/fixtures/README.md):
    /usr/bin/python3 scripts/parity_diffusers.py DIFFUSERS_SRC [OUT]
where DIFFUSERS_SRC is a directory holding diffusers/schedulers/scheduling_{ddim,ddpm,
deis_multistep,ipndm}.py (e.g. the src/ folder of a diffusers checkout).  Needs torch and
numpy (Debian: python3-torch, python3-numpy), nothing else: the few diffusers modules those
four files import (configuration, output classes, randn_tensor) are replaced by the minimal
stand-ins below, written for this script, and only the four scheduler files are loaded.

Everything runs in float64: after building each scheduler we replace its float32 tables
(alphas_cumprod; DEIS' grid sigmas; iPNDM's alpha/sigma tables) by the same quantities in
float64, so the reference is the algorithm, not float32 rounding.
"""
import atexit
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
N_TRAIN = 1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- stand-in package
class _Config(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


def _register_to_config(init):
    import inspect

    sig = inspect.signature(init)

    def wrapped(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cfg = _Config({k: v for k, v in bound.arguments.items() if k != "self"})
        self._internal_dict = cfg
        init(self, *args, **kwargs)

    return wrapped


class _ConfigMixin:
    @property
    def config(self):
        return self._internal_dict

    def register_to_config(self, **kwargs):
        self._internal_dict.update(kwargs)


@dataclass
class _Output:
    prev_sample: torch.Tensor = None
    pred_original_sample: torch.Tensor = None


_noise_hook = {"next": None}


def _randn_tensor(shape, generator=None, device=None, dtype=None, **_):
    return _noise_hook["next"](shape)


def load_schedulers(src):
    tmp = tempfile.mkdtemp(prefix="parity-diffusers-")
    atexit.register(shutil.rmtree, tmp, True)
    pkg = os.path.join(tmp, "diffusers")
    os.makedirs(os.path.join(pkg, "schedulers"))
    for name in ("ddim", "ddpm", "deis_multistep", "ipndm"):
        shutil.copy(os.path.join(src, "diffusers", "schedulers", f"scheduling_{name}.py"),
                    os.path.join(pkg, "schedulers"))
    for d in (pkg, os.path.join(pkg, "schedulers")):
        open(os.path.join(d, "__init__.py"), "w").close()
    # stand-ins for the modules the four files import
    m = types.ModuleType("diffusers.configuration_utils")
    m.ConfigMixin, m.register_to_config = _ConfigMixin, _register_to_config
    sys.modules[m.__name__] = m
    u = types.ModuleType("diffusers.utils")
    u.BaseOutput = object
    u.deprecate = lambda *a, **k: None
    u.is_scipy_available = lambda: False
    sys.modules[u.__name__] = u
    tu = types.ModuleType("diffusers.utils.torch_utils")
    tu.randn_tensor = _randn_tensor
    sys.modules[tu.__name__] = tu
    su = types.ModuleType("diffusers.schedulers.scheduling_utils")
    su.KarrasDiffusionSchedulers = Enum("KarrasDiffusionSchedulers", "DDIMScheduler")
    su.SchedulerMixin = type("SchedulerMixin", (), {})
    su.SchedulerOutput = _Output
    sys.path.insert(0, tmp)
    importlib.import_module("diffusers.schedulers")
    sys.modules[su.__name__] = su
    mods = {n: importlib.import_module(f"diffusers.schedulers.scheduling_{n}")
            for n in ("ddim", "ddpm", "deis_multistep", "ipndm")}
    return mods


# ---------------------------------------------------------------- the problem
def posterior_mean(problem, x, sh):
    """E[x0 | x0 + sh * eps = x] for the isotropic Gaussian mixture (float64, rows of x)."""
    means = np.array(problem["means"])
    stds = np.array(problem["stds"])
    w = np.array(problem["weights"])
    D = problem["dim"]
    v = stds ** 2 + sh * sh                                   # (K,)
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)         # (B, K)
    logit = np.log(w)[None] - d2 / (2 * v)[None] - D / 2 * np.log(v)[None]
    logit -= logit.max(1, keepdims=True)
    r = np.exp(logit)
    r /= r.sum(1, keepdims=True)
    c = (stds ** 2 / v)[None, :, None]
    comp = means[None] + c * (x[:, None, :] - means[None])   # (B, K, D)
    return (r[:, :, None] * comp).sum(1)


def x0_of(problem, x, alpha, sigma):
    if alpha < 1e-12:   # pure noise: the posterior mean is the prior mean
        return np.tile((np.array(problem["weights"])[:, None] * np.array(problem["means"])).sum(0), (len(x), 1))
    return posterior_mean(problem, x / alpha, sigma / alpha)


def eps_model(problem, x, abar):
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    xn = x.numpy()
    x0 = x0_of(problem, xn, a, s)
    return torch.from_numpy((xn - a * x0) / s)


def v_model(problem, x, a, s):
    xn = x.numpy()
    x0 = x0_of(problem, xn, a, s)
    eps = (xn - a * x0) / s
    return torch.from_numpy(a * eps - s * x0)


def alphas_cumprod(kind):
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float64)
    else:
        betas = torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, N_TRAIN, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def as_list(t):
    return [[float(v) for v in row] for row in t]


# ---------------------------------------------------------------- runs
def run_ddim(mods, problem, x_init, noise, kind, spacing, steps, eta):
    s = mods["ddim"].DDIMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=kind, clip_sample=False,
                                   set_alpha_to_one=True, timestep_spacing=spacing, steps_offset=0)
    s.alphas_cumprod = alphas_cumprod(kind)
    s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(steps)
    x = x_init.clone()
    ts, prev, used = [], [], 0
    for k, t in enumerate(s.timesteps):
        t = int(t)
        ts.append(t)
        prev.append(t - N_TRAIN // steps)
        eps = eps_model(problem, x, float(s.alphas_cumprod[t]))
        kw = {}
        if eta > 0:
            kw["variance_noise"] = noise[k]
            used += 1
        x = s.step(eps, t, x, eta=eta, **kw).prev_sample
    return {"timesteps": ts, "prev_timesteps": prev, "draws": used}, x


def run_ddpm(mods, problem, x_init, noise, kind, spacing, steps):
    s = mods["ddpm"].DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=kind, clip_sample=False,
                                   variance_type="fixed_small", timestep_spacing=spacing, steps_offset=0)
    s.alphas_cumprod = alphas_cumprod(kind)
    s.one = torch.tensor(1.0, dtype=torch.float64)
    s.set_timesteps(steps)
    it = iter(noise)
    count = {"n": 0}

    def nxt(shape):
        count["n"] += 1
        return next(it)

    _noise_hook["next"] = nxt
    x = x_init.clone()
    ts = [int(t) for t in s.timesteps]
    for t in ts:
        eps = eps_model(problem, x, float(s.alphas_cumprod[t]))
        x = s.step(eps, t, x).prev_sample
    prev = ts[1:] + [-1]
    return {"timesteps": ts, "prev_timesteps": prev, "draws": count["n"]}, x


def run_deis(mods, problem, x_init, kind, spacing, steps, order):
    s = mods["deis_multistep"].DEISMultistepScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule=kind, solver_order=order, algorithm_type="deis",
        solver_type="logrho", lower_order_final=True, timestep_spacing=spacing, steps_offset=0)
    ac = alphas_cumprod(kind)
    s.alphas_cumprod = ac
    s.set_timesteps(steps)
    ts = [int(t) for t in s.timesteps]
    # the grid's sigma_hat = sqrt((1 - abar) / abar) at each timestep, then at timestep 0, in float64
    sig = [math.sqrt((1 - float(ac[t])) / float(ac[t])) for t in ts + [0]]
    assert np.allclose(np.array(sig), s.sigmas.numpy(), rtol=1e-6, atol=0)
    s.sigmas = torch.tensor(sig, dtype=torch.float64)
    x = x_init.clone()
    for t in ts:
        eps = eps_model(problem, x, float(ac[t]))
        x = s.step(eps, t, x).prev_sample
    return {"timesteps": ts, "final_timestep": 0}, x


def run_ipndm(mods, problem, x_init, sigmas, steps):
    """iPNDM on the grid whose points have sigma = sigmas[i] and alpha = sqrt(1 - sigma^2)
    (sigmas = None: diffusers' own grid, sigma = sin^2(pi/2 s) for s = 1 .. 0)."""
    kw = {} if sigmas is None else {"trained_betas": [float(v) for v in sigmas]}
    s = mods["ipndm"].IPNDMScheduler(num_train_timesteps=N_TRAIN, **kw)
    s.set_timesteps(steps)
    if sigmas is None:
        grid = torch.cat([torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1], torch.zeros(1)])
        sig = torch.sin(grid * math.pi / 2) ** 2
    else:
        sig = torch.tensor(sigmas, dtype=torch.float64)
    assert torch.allclose(sig, s.betas.to(torch.float64), rtol=1e-6, atol=1e-7)
    s.betas = sig
    s.alphas = (1 - sig ** 2) ** 0.5
    s.timesteps = (torch.atan2(s.betas, s.alphas) / math.pi * 2)[:-1]
    x = x_init.clone()
    for k, t in enumerate(s.timesteps):
        v = v_model(problem, x, float(s.alphas[k]), float(s.betas[k]))
        x = s.step(v, t, x).prev_sample
    return {"sigmas": [float(v) for v in sig], "alphas": [float(v) for v in s.alphas]}, x


def ddim_grid(spacing, steps):
    """diffusers' DDIM/DDPM timesteps for a spacing (leading, trailing, linspace)."""
    if spacing == "leading":
        r = N_TRAIN // steps
        return [int(v) for v in (np.arange(0, steps) * r).round()[::-1]]
    if spacing == "trailing":
        r = N_TRAIN / steps
        return [int(v) - 1 for v in np.round(np.arange(N_TRAIN, 0, -r))]
    return [int(v) for v in np.linspace(0, N_TRAIN - 1, steps).round()[::-1]]


def main():
    src = sys.argv[1]
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "spec/fixtures/parity-diffusers.json")
    mods = load_schedulers(src)
    base = json.load(open(os.path.join(ROOT, "spec/fixtures/parity-gmm2.json")))
    problem = base["problem"]
    x_init = torch.tensor(base["cases"][0]["x_init"], dtype=torch.float64) / 80.0
    rng = np.random.default_rng(20240601)
    noise = torch.from_numpy(rng.standard_normal((20, x_init.shape[0], x_init.shape[1])))
    kinds, spacings, steps_list = ("linear", "scaled_linear"), ("leading", "trailing", "linspace"), (5, 10, 20)
    cases = []

    def add(name, params, info, x):
        c = {"name": name, "params": params}
        c.update(info)
        c["out"] = as_list(x)
        cases.append(c)

    for kind in kinds:
        for spacing in spacings:
            for steps in steps_list:
                p = {"beta_schedule": kind, "timestep_spacing": spacing, "steps": steps}
                for eta in (0.0, 1.0):
                    info, x = run_ddim(mods, problem, x_init, noise, kind, spacing, steps, eta)
                    add(f"ddim/eta{int(eta)}/{kind}/{spacing}/{steps}", dict(p, eta=eta), info, x)
                info, x = run_ddpm(mods, problem, x_init, noise, kind, spacing, steps)
                add(f"ddpm/{kind}/{spacing}/{steps}", dict(p, variance_type="fixed_small"), info, x)
                for order in (1, 2, 3):
                    info, x = run_deis(mods, problem, x_init, kind, spacing, steps, order)
                    add(f"deis/order{order}/{kind}/{spacing}/{steps}", dict(p, solver_order=order), info, x)
                ac = alphas_cumprod(kind)
                ts = ddim_grid(spacing, steps)
                sig = [math.sqrt(1 - float(ac[t])) for t in ts] + [0.0]
                info, x = run_ipndm(mods, problem, x_init, sig, steps)
                info["timesteps"] = ts
                add(f"ipndm/{kind}/{spacing}/{steps}", dict(p, grid="trained_betas"), info, x)
    for steps in steps_list:
        info, x = run_ipndm(mods, problem, x_init, None, steps)
        add(f"ipndm/native/{steps}", {"steps": steps, "grid": "native"}, info, x)

    out = {
        "source": ("diffusers (huggingface/diffusers) DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, "
                   "IPNDMScheduler, run in float64 by scripts/parity_diffusers.py; see spec/fixtures/README.md"),
        "problem": problem,
        "num_train_timesteps": N_TRAIN,
        "alphas_cumprod": {k: [float(v) for v in alphas_cumprod(k)] for k in kinds},
        "x_init": as_list(x_init),
        "noise": [as_list(z) for z in noise],
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} cases -> {out_path}")


if __name__ == "__main__":
    main()
