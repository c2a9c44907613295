"""The leaves satisfy the umbrella's protocols structurally (style §4.6), without importing `sana`.

`runtime_checkable` only checks that the members exist, so the call signatures are compared too: every parameter
the protocol passes must be accepted by the implementation, by name and kind.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from dcae import DCAE
from dcae.testing import tiny_config as tiny_ae_config
from flow_dpm import FlowDPMSolver, FlowEuler, FlowHeun
from linear_dit import LinearDiT
from linear_dit.testing import tiny_config as tiny_dit_config
from sana import protocols
from sana_text.testing import tiny_text_encoder


def _accepts(implementation, protocol_method) -> list[str]:
    """Names of the protocol's parameters that the implementation cannot take as the protocol passes them."""
    have = inspect.signature(implementation).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in have.values())
    missing = []
    for name, param in list(inspect.signature(protocol_method).parameters.items())[1:]:  # skip self
        if name in have:
            continue
        if param.kind is inspect.Parameter.KEYWORD_ONLY and var_kw:
            continue
        missing.append(name)
    return missing


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return {
        "autoencoder": DCAE(tiny_ae_config()),
        "denoiser": LinearDiT(tiny_dit_config()),
        "text_encoder": tiny_text_encoder(),
    }


@pytest.mark.parametrize(
    ("part", "protocol", "methods"),
    [
        ("autoencoder", protocols.Autoencoder, ("encode", "decode")),
        ("autoencoder", protocols.SupportsTiledDecode, ("decode_tiled",)),
        ("text_encoder", protocols.TextEncoder, ("encode", "encode_negative")),
        ("text_encoder", protocols.SupportsFree, ("free",)),
        ("denoiser", protocols.Denoiser, ("__call__",)),
        ("denoiser", protocols.SupportsPAG, ("__call__",)),
    ],
)
def test_leaf_parts_satisfy_the_protocols(parts, part, protocol, methods):
    obj = parts[part]
    assert isinstance(obj, protocol)
    for name in methods:
        implementation = obj.forward if name == "__call__" and isinstance(obj, torch.nn.Module) else getattr(obj, name)
        assert not _accepts(implementation, getattr(protocol, name)), f"{type(obj).__name__}.{name} vs {protocol}"


@pytest.mark.parametrize("sampler", [FlowDPMSolver(), FlowEuler(), FlowHeun()])
def test_flow_dpm_samplers_satisfy_the_sampler_protocol(sampler):
    assert isinstance(sampler, protocols.Sampler)
    assert not _accepts(sampler.sample, protocols.Sampler.sample)


def test_protocol_attributes_have_the_promised_types(parts):
    ae, te = parts["autoencoder"], parts["text_encoder"]
    assert isinstance(ae.spatial_compression, int) and isinstance(ae.latent_channels, int)
    assert isinstance(ae.scaling_factor, float)
    assert isinstance(te.embed_dim, int) and isinstance(te.max_length, int)
    assert isinstance(parts["denoiser"].pag_layers, tuple)


def test_a_part_missing_a_member_is_rejected():
    class NoDecode:
        spatial_compression, latent_channels, scaling_factor = 8, 4, 1.0

        def encode(self, images):
            return images

    assert not isinstance(NoDecode(), protocols.Autoencoder)
