"""CLIP4Clip's ``seqLSTM`` similarity calculator (SPEC §7): an LSTM over the real frames.

The CLIP frame features run through a one-layer unidirectional LSTM of width D over the real
frames only (a packed sequence, so padding never enters the recurrence), its outputs are added
back to the inputs, and the masked mean of SPEC §0 gives the video feature. The model is
:class:`~vtrkit.models.meanpool.Clip4Clip` with this encoder in the temporal slot; text side,
similarity and loss are meanP's.

The LSTM keeps PyTorch's parameter names (``lstm.weight_ih_l0`` ...), which are the official
checkpoint's ``lstm_visual.*`` names under another prefix. The official code also creates a
frame-position table for seqLSTM but never uses it; this encoder has none.

Shapes: V videos, Nf frame slots, D width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class SeqLstmEncoder(nn.Module):
    """One-layer LSTM (input and hidden width D) over real frames, plus the residual.

    Args:
        width: feature width D.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.lstm = nn.LSTM(width, width, num_layers=1, batch_first=True, bidirectional=False)

    def forward(self, frames: Tensor, mask: Tensor) -> Tensor:
        """frames: [V, Nf, D] CLIP frame features; mask: [V, Nf] bool (True = real frame).

        Returns [V, Nf, D]: at real frames ``lstm(real frames in order) + frames``; at padded
        slots the input itself (no LSTM output), which the masked mean ignores. Real frames need
        not be a prefix: they are taken in slot order, whatever the padding pattern.
        """
        v, nf, d = frames.shape
        if d != self.width:
            raise ValueError(f"seqLSTM was built for width {self.width}, got frames of width {d}")
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("seqLSTM: a video has no real frame (video_mask all False)")
        # Move each video's real frames to the front, keeping their order (stable sort).
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [V, Nf]
        packed_in = frames.gather(1, order[..., None].expand(v, nf, d))
        packed = pack_padded_sequence(
            packed_in, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=nf)  # [V, Nf, D]
        out = out.to(frames.dtype)
        # Back to the original slots; padded slots get zeros from pad_packed_sequence.
        scattered = torch.zeros_like(frames).scatter(1, order[..., None].expand(v, nf, d), out)
        return scattered + frames
