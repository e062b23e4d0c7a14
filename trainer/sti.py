"""The STI (spatio-temporal interaction) layer of DFGN: the temporal layer that sits after every resnet of the UNet.

It replaces diffusers' `TemporalConvLayer` (the "3D-conv temporal layer" of the paper's ablation) with the same call,
`layer(hidden_states (b*f, c, h, w), num_frames) -> (b*f, c, h, w)`. See ../docs/model.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from rdtf.trainer.model_settings import Fusion

# Width of the gate's hidden layer: SKNet's rule max(C / r, L) with r = 16, L = 32 (Li et al. 2019, "Selective
# Kernel Networks"), whose pooled-features-to-branch-weights gate the paper's figure follows; the paper gives no width.
GATE_REDUCTION = 16
GATE_MIN_WIDTH = 32


class STILayer(nn.Module):
    """Two branches over h (b, c, f, h, w), fused by weights, then GroupNorm, added to h.

    1. semantic = upsample(attention(avgpool(h))) + h: multi-head self-attention over all f*(h/2)*(w/2) tokens of
       the 2x2-average-pooled features (joint space-time attention at half resolution), through a diffusers
       `Attention` (SDPA processor, GroupNorm on its input), nearest-neighbour upsampling back to (h, w).
    2. detail = two temporal convolutions, kernel (3, 1, 1) (paper Table 6), each GroupNorm -> SiLU -> conv as in
       diffusers' TemporalConvLayer. They are depthwise (one filter per channel): the paper does not say how the
       detail branch mixes channels, and full c -> c convolutions would put DFGN at 1.07 B parameters instead of
       the paper's 0.96 B; the semantic branch mixes channels.
    3. fused = w_s * semantic + w_d * detail, with `fusion`:
       "mlp_gate" (the paper's figure): (w_s, w_d) = softmax(MLP(mean over f, h, w of semantic + detail)), per clip;
       "scalars" (the released code): two learnable scalars, w_s = 0 and w_d = 1 at init.
    4. out = h + GroupNorm(fused), the GroupNorm's scale initialised to zero, so that a fresh layer is exactly the
       identity (as diffusers zero-inits TemporalConvLayer's last conv) and the fused branches grow in from there.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        head_dim: int = 32,
        fusion: Fusion = "mlp_gate",
        norm_num_groups: int = 32,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.fusion = fusion
        self.attention = Attention(
            channels, heads=num_heads, dim_head=head_dim, norm_num_groups=norm_num_groups, eps=eps, out_bias=True
        )
        self.detail = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), groups=channels),
            nn.GroupNorm(norm_num_groups, channels, eps=eps),
            nn.SiLU(),
            nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), groups=channels),
        )
        if fusion == "mlp_gate":
            width = max(channels // GATE_REDUCTION, GATE_MIN_WIDTH)
            self.gate = nn.Sequential(nn.Linear(channels, width), nn.SiLU(), nn.Linear(width, 2))
            # Equal weights (0.5, 0.5) at init: neither branch is preferred before training says so.
            nn.init.zeros_(self.gate[-1].weight)
            nn.init.zeros_(self.gate[-1].bias)
        else:
            self.fusion_weights = nn.Parameter(torch.tensor([0.0, 1.0]))  # (w_s, w_d), as the released code
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=eps)
        nn.init.zeros_(self.norm.weight)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """hidden_states (b*f, c, h, w) with the frames of a clip adjacent, as diffusers' 3D blocks pass them."""
        frames, channels, height, width = hidden_states.shape
        batch = frames // num_frames
        # 1. semantic branch; pooling in the (b*f, c, h, w) layout, where CPU kernels also take bfloat16
        pooled = F.avg_pool2d(hidden_states, 2, ceil_mode=True)  # ceil: odd sizes (and 1x1) keep their last row
        tokens = _clips(pooled, num_frames).flatten(2).transpose(1, 2)  # (b, f*h/2*w/2, c)
        attended = self.attention(tokens).transpose(1, 2).reshape(batch, channels, num_frames, *pooled.shape[2:])
        semantic = F.interpolate(_frames(attended), size=(height, width), mode="nearest") + hidden_states
        semantic = _clips(semantic, num_frames)
        # 2. detail branch
        h = _clips(hidden_states, num_frames)
        detail = self.detail(h)
        # 3. fusion
        if self.fusion == "mlp_gate":
            weights = self.gate((semantic + detail).mean(dim=(2, 3, 4))).softmax(dim=-1)  # (b, 2)
        else:
            weights = self.fusion_weights.expand(batch, 2)
        weights = weights.to(h.dtype)[:, :, None, None, None, None]
        fused = weights[:, 0] * semantic + weights[:, 1] * detail
        # 4. normalise and add
        return _frames(h + self.norm(fused))


def _clips(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, c, f, h, w)."""
    return frames.reshape(-1, num_frames, *frames.shape[1:]).transpose(1, 2)


def _frames(clips: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w)."""
    return clips.transpose(1, 2).flatten(0, 1)
