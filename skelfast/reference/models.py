"""Reference models: multi-modal MoCo (CrosSCLR-3 / IKEM-6), teacher-student, linear evaluation.

Layer: reference (plain PyTorch). A modality is an index into stacked ModuleLists and stacked
queues, never a hand-written copy. Inputs are raw skeletons (N, 3, T, V, M) plus frame counts;
the modalities are built with skelfast.reference.modalities (method.md §3).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..modality_spec import MODALITIES3, MODALITIES6
from . import losses as _losses
from .losses import concat_keys
from .modalities import modalities as _reference_modalities
from .modalities import nrm
from .encoder_list import EncoderList
from .moco import QueueBank, momentum_update_
from .parity import Parity, resolve_lock
from .._scalars import is_int, is_real
from .stgcn import weights_init_official

__all__ = ["MultiModalMoCo", "TeacherStudent", "LinearEval", "view_streams", "ikem_head", "REFERENCE_KERNELS",
           "kernel_set"]

# The functions a model calls for its modalities, losses and encoders. Fused implementations with
# the same signatures (skelfast.ops, skelfast.nn.StackedEncoders.build) are swapped in through
# `kernels=` (see skelfast.models.build). `encoders(G, **STGCN kwargs)` builds the G encoders of one
# role; both implementations share one state-dict layout.
KERNEL_NAMES = ("modalities", "info_nce", "context_loss", "ikem_loss", "relational_distill_loss", "encoders")
REFERENCE_KERNELS = SimpleNamespace(modalities=_reference_modalities, info_nce=_losses.info_nce,
                                    context_loss=_losses.context_loss, ikem_loss=_losses.ikem_loss,
                                    relational_distill_loss=_losses.relational_distill_loss,
                                    encoders=EncoderList.build)


def kernel_set(**overrides) -> SimpleNamespace:
    """REFERENCE_KERNELS with some functions replaced; unknown names raise."""
    unknown = sorted(set(overrides) - set(KERNEL_NAMES))
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown}; known: {KERNEL_NAMES}")
    return SimpleNamespace(**{**vars(REFERENCE_KERNELS), **overrides})


def ikem_head(hidden_dim: int, out_dim: int) -> nn.Sequential:
    """mlp2x = Linear(hidden_dim, out) -> ReLU -> Linear(out, out) on the pooled feature (§5.4b)."""
    head = nn.Sequential(nn.Linear(hidden_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
    head.apply(weights_init_official)
    return head


def _check_names(names: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(names, str):     # 'joint' would be read letter by letter
        raise ValueError(f"modalities must be a sequence of names, got the string {names!r} (use ({names!r},))")
    names = tuple(names)
    bad = [n for n in names if n not in MODALITIES6]
    if bad or len(set(names)) != len(names) or not names:
        raise ValueError(f"modalities must be one or more distinct names from {MODALITIES6}, got {names}")
    return names


def _check_contrast_args(queue_size, tau, topk, momentum=None) -> None:
    """Raise ValueError naming the argument, at construction: the fused ops refused these mid-forward,
    after the BatchNorm statistics (and the key encoders) had been updated, and the reference
    losses computed on with them (a negative tau gave a plausible loss)."""
    for name, v in (("queue_size", queue_size), ("topk", topk)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if topk > queue_size:
        raise ValueError(f"topk={topk} mines more positives than the queue holds (queue_size={queue_size})")
    if not is_real(tau) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if momentum is not None and (not is_real(momentum) or not 0 <= momentum <= 1):
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")


def check_batch_divides_queue(queue_size: int, batch: int) -> None:
    """Keys are enqueued as whole batches (method.md §5.1: K mod N = 0); checked before a training
    forward changes any state."""
    if batch < 1 or queue_size % batch:
        raise ValueError(f"the batch of {batch} samples does not divide queue_size={queue_size}: the queue takes "
                         f"whole batches (method.md §5.1)")


class _ModalityInput(nn.Module):
    """Shared input handling: raw skeleton -> stacked modality tensors (method.md §3)."""

    def _init_inputs(self, modality_topology: str, true_timeline: bool, kernels: Optional[SimpleNamespace] = None):
        self.kernels = REFERENCE_KERNELS if kernels is None else kernels
        self.modality_topology = modality_topology
        # method.md §11 #14: whether the time scale 50/F is used is explicit per model.
        self.true_timeline = true_timeline

    def make_inputs(self, x: torch.Tensor, frames: Optional[torch.Tensor], names: Sequence[str]) -> torch.Tensor:
        """x (N, 3, T, V, M) -> (len(names), N, 3, T, V, M); no gradient (the modalities have no parameters)."""
        with torch.no_grad():
            f = frames if self.true_timeline else None
            return self.kernels.modalities(x, f, names, self.modality_topology).transpose(0, 1)


class MultiModalMoCo(_ModalityInput):
    """G-modality MoCo pretraining model: 3-modality CrosSCLR/IKEM and 6-modality IKEM (§5).

    Modules (G = len(modalities)):
        encoders_q, encoders_k: G encoders with 256->256->128 MLP heads (an EncoderList of STGCNs,
            or the kernel set's batched StackedEncoders; same state-dict layout); key encoders
            have requires_grad False and are updated by momentum only (§5.1).
        ikem_heads: ModuleList of mlp2x (256 -> G*128 -> G*128), §5.4b.
        queues: QueueBank (G, feature_dim, K) with a host-side pointer.
        lock: per-modality flags, True = key encoder frozen in phase 2 (§5.4, §11 #2).

    forward(im_q, im_k, frames=None, phase=1|2) -> dict with 'loss' (scalar to backpropagate),
    'losses' (G,) per-modality totals, 'q' (G,N,D), 'k' (G,N,D) and, in phase 2, 'u', 'context',
    'ikem'. In training mode the keys are enqueued at the end (§5.6 step 7).
    """

    def __init__(self, modalities: Sequence[str] = MODALITIES6, in_channels: int = 3, hidden_channels: int = 16,
                 hidden_dim: int = 256, feature_dim: int = 128, queue_size: int = 32768, momentum: float = 0.999,
                 tau: float = 0.07, topk: int = 1, dropout: float = 0.5, topology: str = "ntu25",
                 modality_topology: str = "ntu25", true_timeline: bool = True, edge_importance: bool = True,
                 parity: Parity = Parity(), kernels: Optional[SimpleNamespace] = None):
        super().__init__()
        self.modalities = _check_names(modalities)
        _check_contrast_args(queue_size, tau, topk, momentum)
        G = len(self.modalities)
        self.parity = parity
        self._init_inputs(modality_topology, true_timeline, kernels)
        self.momentum, self.tau, self.topk, self.feature_dim = momentum, tau, topk, feature_dim
        enc = dict(in_channels=in_channels, hidden_channels=hidden_channels, hidden_dim=hidden_dim, head="mlp",
                   feature_dim=feature_dim, dropout=dropout, topology=topology, edge_importance=edge_importance)
        # §11 #10 ties heads across encoders, which only separate reference encoders can express.
        make_encoders = REFERENCE_KERNELS.encoders if parity.shared_crossclr_heads else self.kernels.encoders
        self.encoders_q = make_encoders(G, **enc)
        self.encoders_k = make_encoders(G, **enc)
        if parity.shared_crossclr_heads:
            # §11 #10 (CrosSCLR original): modality g>0 head = own Linear+ReLU, then modality 0's head.
            for encs in (self.encoders_q, self.encoders_k):
                for g in range(1, G):
                    encs[g].fc = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), encs[0].fc)
                    encs[g].fc[0].apply(weights_init_official)
        if not parity.independent_key_init:
            # MoCo-correct start (§11 #4 off): key = query. Officially weights_init re-draws keys afterwards.
            self.encoders_k.load_state_dict(self.encoders_q.state_dict())
        for p in self.encoders_k.parameters():
            p.requires_grad_(False)
        self.ikem_heads = nn.ModuleList(ikem_head(hidden_dim, G * feature_dim) for _ in range(G))
        self.queues = QueueBank(G, feature_dim, queue_size)
        self.lock = resolve_lock(parity, self.modalities)

    # --- MoCo machinery -------------------------------------------------------------------------
    def momentum_update_(self, which: Optional[Sequence[int]] = None) -> None:
        """Momentum-update key encoders `which` (default all) in one multi-tensor update (§5.1)."""
        which = range(len(self.modalities)) if which is None else list(which)
        if self.parity.shared_crossclr_heads:
            # Shared head tensors appear in several encoder pairs: officially updated once per pair,
            # in sequence, so keep one update per pair here.
            for g in which:
                momentum_update_(list(self.encoders_k[g].parameters()), list(self.encoders_q[g].parameters()),
                                 self.momentum)
            return
        self.encoders_k.momentum_update_(self.encoders_q, self.momentum, which)

    def unlocked(self, phase: int) -> Tuple[int, ...]:
        """Indices of key encoders updated in this phase: all in phase 1, the unlocked ones in phase 2."""
        return tuple(range(len(self.modalities))) if phase == 1 else tuple(
            g for g, locked in enumerate(self.lock) if not locked)

    @torch.no_grad()
    def keys(self, xk: torch.Tensor) -> torch.Tensor:
        """xk (G, N, C, T, V, M) -> unit keys (G, N, D) from the key encoders (train mode as officially)."""
        return nrm(self.encoders_k(xk)[0], dim=-1)

    def queries(self, xq: torch.Tensor, with_ikem: bool):
        """xq (G, N, C, T, V, M) -> q (G, N, D) and, if with_ikem, u = nrm(mlp2x(h_x)) (G, N, G*D)."""
        z, h = self.encoders_q(xq)
        u = torch.stack([nrm(head(hg)) for head, hg in zip(self.ikem_heads, h)]) if with_ikem else None
        return nrm(z, dim=-1), u

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, frames: Optional[torch.Tensor] = None,
                phase: int = 1, enqueue: bool = True) -> Dict[str, torch.Tensor]:
        """One pretraining forward (§5.3 phase 1, §5.4/§5.6 phase 2).

        Args:
            im_q, im_k: (N, 3, T, V, M) two augmented views; frames: (N,) raw frame counts F.
            phase: 1 (separate InfoNCE) or 2 (cross-modal context + IKEM).
            enqueue: enqueue the keys at the end (only in training mode).
        """
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {phase}")
        if self.training and enqueue:
            check_batch_divides_queue(self.queues.queue.shape[-1], im_q.shape[0])
        xq = self.make_inputs(im_q, frames, self.modalities)
        xk = self.make_inputs(im_k, frames, self.modalities)
        with_ikem = phase == 2 and self.parity.ikem_term
        q, u = self.queries(xq, with_ikem)
        with torch.no_grad():
            if self.training:
                self.momentum_update_(self.unlocked(phase))  # before the keys of this step (§5.1)
            k = self.keys(xk)
        # The loss uses the queue before this step's enqueue and backward needs it intact: a snapshot
        # (a full copy, 100 MB for 6 x 128 x 32768) only when this forward enqueues. The trainer
        # enqueues after the optimiser step (enqueue=False); an in-place write before backward would
        # still be caught by autograd's version check on the saved queue, never silently used.
        queue = self.queues.queue.clone() if self.training and enqueue else self.queues.queue
        out = {"q": q, "k": k}
        if phase == 1:
            losses = self.kernels.info_nce(q, k, queue, self.tau)
        else:
            ctx = self.kernels.context_loss(q, k, queue, self.tau, self.topk, context=self.parity.context)
            out["context"] = ctx
            losses = ctx
            if with_ikem:
                ik = self.kernels.ikem_loss(u, k, queue, self.tau)
                out["u"], out["ikem"] = u, ik
                losses = ctx + ik
        out["losses"] = losses
        out["loss"] = losses.sum()
        if self.training and enqueue:
            self.enqueue_(k)
        return out

    @torch.no_grad()
    def enqueue_(self, k: torch.Tensor) -> None:
        """Enqueue keys k (G, N, D) of one (global) batch (§5.6 step 7): what forward(enqueue=True)
        does, for callers that enqueue after the optimiser step (the trainer)."""
        self.queues.enqueue_(k)


class TeacherStudent(_ModalityInput):
    """Relational cross-modal distillation (§6.1 six-modality teacher, three students; §6.2 fused).

    Modules:
        teacher: G encoders (256->256->128 heads; EncoderList or StackedEncoders), all frozen.
        students: encoders with 256 -> G*128 -> G*128 heads; one per student modality, or one
            fused student on the channel concatenation of student_modalities (in_channels 3*S).
        queues: QueueBank (G, 128, K) of teacher queries; teacher_queue: QueueBank (1, G*128, K).
    """

    def __init__(self, teacher_modalities: Sequence[str] = MODALITIES6,
                 student_modalities: Sequence[str] = MODALITIES3, fused_student: bool = False,
                 in_channels: int = 3, hidden_channels: int = 16, hidden_dim: int = 256, feature_dim: int = 128,
                 queue_size: int = 32768, tau: float = 0.07, topk: int = 1, dropout: float = 0.5,
                 topology: str = "ntu25", modality_topology: str = "ntu25", true_timeline: bool = True,
                 edge_importance: bool = True, parity: Parity = Parity(), kernels: Optional[SimpleNamespace] = None):
        super().__init__()
        self.teacher_modalities = _check_names(teacher_modalities)
        self.student_modalities = _check_names(student_modalities)
        _check_contrast_args(queue_size, tau, topk)
        self.fused_student = fused_student
        self.parity = parity
        self._init_inputs(modality_topology, true_timeline, kernels)
        self.tau, self.topk = tau, topk
        G = len(self.teacher_modalities)
        common = dict(hidden_channels=hidden_channels, hidden_dim=hidden_dim, head="mlp", dropout=dropout,
                      topology=topology, edge_importance=edge_importance)
        self.teacher = self.kernels.encoders(G, in_channels=in_channels, feature_dim=feature_dim, **common)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        num_students = 1 if fused_student else len(self.student_modalities)
        s_in = in_channels * len(self.student_modalities) if fused_student else in_channels
        self.students = self.kernels.encoders(num_students, in_channels=s_in, feature_dim=G * feature_dim,
                                              head_hidden=G * feature_dim, **common)
        self.queues = QueueBank(G, feature_dim, queue_size)
        self.teacher_queue = QueueBank(1, G * feature_dim, queue_size)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.parity.teacher_train_mode:
            self.teacher.eval()  # §11 #5 fixed: frozen teacher in eval mode
        return self

    def teacher_queues(self, snapshot: bool = True) -> torch.Tensor:
        """(G, D, K) teacher-modality queues, with §11 BUG #1 applied if requested: a copy when
        `snapshot` or the parity flag needs one, else the buffer itself."""
        names = self.teacher_modalities
        omega_bug = self.parity.omega_uses_bone_queue and "omega" in names and "bone" in names
        if not (snapshot or omega_bug):
            return self.queues.queue
        Q = self.queues.queue.clone()
        if omega_bug:
            Q[names.index("omega")] = Q[names.index("bone")]
        return Q

    def student_features(self, x2: torch.Tensor, frames: Optional[torch.Tensor]) -> torch.Tensor:
        """View-2 skeleton -> unit student features (S, N, G*D)."""
        xs = self.make_inputs(x2, frames, self.student_modalities)       # (S, N, 3, T, V, M)
        if self.fused_student:
            xs = xs.transpose(0, 1).flatten(1, 2).unsqueeze(0)          # (1, N, 3S, T, V, M), [J, Mo, B]
        return nrm(self.students(xs)[0], dim=-1)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, frames: Optional[torch.Tensor] = None,
                enqueue: bool = True) -> Dict[str, torch.Tensor]:
        """Teacher on view 1 (no grad), students on view 2 (§6.1 'Forward, per step')."""
        if self.training and enqueue:
            check_batch_divides_queue(self.queues.queue.shape[-1], im_q.shape[0])
        xq = self.make_inputs(im_q, frames, self.teacher_modalities)
        with torch.no_grad():
            tq = nrm(self.teacher(xq)[0], dim=-1)                               # (G, N, D)
        s = self.student_features(im_k, frames)
        snapshot = self.training and enqueue      # copies only if this forward enqueues (see MultiModalMoCo.forward)
        tqueue = self.teacher_queue.queue[0].clone() if snapshot else self.teacher_queue.queue[0]
        losses = self.kernels.relational_distill_loss(tq, s, self.teacher_queues(snapshot), tqueue, self.tau,
                                                      self.topk)
        out = {"teacher_q": tq, "student": s, "losses": losses, "loss": losses.sum()}
        if self.training and enqueue:
            self.enqueue_(tq)
        return out

    @torch.no_grad()
    def enqueue_(self, tq: torch.Tensor) -> None:
        """Enqueue teacher queries tq (G, N, D) and t = nrm(concat tq) (§6.1 'After the step'; no key
        encoders here): what forward(enqueue=True) does, for callers that enqueue after the step."""
        self.queues.enqueue_(tq)
        self.teacher_queue.enqueue_(concat_keys(tq).unsqueeze(0))


def view_streams(streams: Sequence[str], fused: bool, view: str) -> Tuple[int, ...]:
    """Indices into `streams` of the encoders whose logits a LinearEval averages for `view` (§7
    'Views'): 'all', '3views' (joint, motion, bone) or one modality; the fused student has 'all' only."""
    if fused:
        if view != "all":
            raise ValueError(f"the fused-student model only has view 'all', got {view!r}")
        return (0,)
    streams = tuple(streams)
    if view == "all":
        return tuple(range(len(streams)))
    if view == "3views":
        if not all(m in streams for m in MODALITIES3):
            raise ValueError(f"view '3views' needs joint, motion and bone streams, have {streams}")
        return tuple(streams.index(m) for m in MODALITIES3)
    if view in streams:
        return (streams.index(view),)
    raise ValueError(f"unknown view {view!r}; expected 'all', '3views' or one of {streams}")


class LinearEval(_ModalityInput):
    """Linear evaluation (§7): frozen encoders, a trainable Linear(256, num_class) per stream.

    streams: the modality of each encoder; with fused=True a single encoder reads the channel
    concatenation of all stream modalities (the §6.2 student). kind: 'teacher' (official names
    encoder_q*) or 'student' (encoder_student_*), used by the checkpoint mapping. The encoders are
    the kernel set's (an EncoderList of STGCNs with linear heads, or skelfast's batched
    StackedEncoders); both have the state-dict layout `encoders.{i}.*`.

    forward(x, frames=None, view=None) -> logits (N, num_class):
        a modality name -> that stream; '3views' -> mean of joint, motion, bone logits;
        'all' -> mean of every stream's logits (the fused student: its own logits).
    The backbones stay in eval mode even under .train() (official, §7) unless backbone_eval=False.
    """

    def __init__(self, streams: Sequence[str] = MODALITIES6, fused: bool = False, kind: str = "teacher",
                 num_class: int = 60, in_channels: int = 3, hidden_channels: int = 16, hidden_dim: int = 256,
                 dropout: float = 0.5, topology: str = "ntu25", modality_topology: str = "ntu25",
                 true_timeline: bool = True, edge_importance: bool = True, default_view: str = "all",
                 backbone_eval: bool = True, parity: Parity = Parity(), kernels: Optional[SimpleNamespace] = None):
        super().__init__()
        if kind not in ("teacher", "student"):
            raise ValueError(f"kind must be 'teacher' or 'student', got {kind!r}")
        self.streams = _check_names(streams)
        self.fused, self.kind, self.parity = fused, kind, parity
        self.default_view, self.backbone_eval, self.hidden_dim = default_view, backbone_eval, hidden_dim
        self._init_inputs(modality_topology, true_timeline, kernels)
        n_enc = 1 if fused else len(self.streams)
        c_in = in_channels * len(self.streams) if fused else in_channels
        self.encoders = self.kernels.encoders(n_enc, in_channels=c_in, hidden_channels=hidden_channels,
                                              hidden_dim=hidden_dim, head="linear", num_class=num_class,
                                              dropout=dropout, topology=topology, edge_importance=edge_importance)
        # Only the heads (fc.weight and fc.bias of each encoder) are trainable (§7 'What is trained').
        for name, p in self.encoders.named_parameters():
            p.requires_grad_("fc" in name.split("."))
        self.train()

    @property
    def per_stream(self) -> bool:
        """True when the encoders are separate modules (an EncoderList), so a view runs only its own."""
        return isinstance(self.encoders, nn.ModuleList)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_eval:
            self.encoders.eval()  # official: model.eval() during linear-evaluation training too
        return self

    def view_streams(self, view: str) -> Tuple[int, ...]:
        """Indices of the encoders whose logits are averaged for `view` (§7 'Views')."""
        return view_streams(self.streams, self.fused, view)

    def encoder_inputs(self, x: torch.Tensor, frames: Optional[torch.Tensor],
                       idx: Optional[Sequence[int]] = None) -> torch.Tensor:
        """x (N, 3, T, V, M) -> the inputs of encoders `idx` (default all): (len(idx), N, 3, T, V, M),
        or (1, N, 3S, T, V, M) for the fused student (channels of its S modalities concatenated)."""
        if self.fused:
            xs = self.make_inputs(x, frames, self.streams)                 # (S, N, 3, T, V, M)
            return xs.transpose(0, 1).flatten(1, 2).unsqueeze(0)
        idx = range(len(self.streams)) if idx is None else idx
        return self.make_inputs(x, frames, [self.streams[i] for i in idx])

    def forward(self, x: torch.Tensor, frames: Optional[torch.Tensor] = None, view: Optional[str] = None):
        """x (N, 3, T, V, M), frames (N,) -> logits (N, num_class), the mean over the view's streams."""
        view = self.default_view if view is None else view
        idx = self.view_streams(view)
        # Logit average inside the model: one CE on it trains the participating heads jointly (§7).
        if self.per_stream:
            inputs = self.encoder_inputs(x, frames, idx)
            return torch.stack([self.encoders[i](xi)[0] for i, xi in zip(idx, inputs)]).mean(0)
        # Batched encoders always run all streams. For a view of some of them, frozen and without
        # gradients, the other streams' outputs are simply unused; otherwise those streams' BN
        # statistics would move and their stacked parameters would get zero (not absent) gradients,
        # so weight decay would change them.
        partial = len(idx) < self.encoders.num_models
        if partial and (self.encoders.training or (torch.is_grad_enabled()
                                                   and any(p.requires_grad for p in self.encoders.parameters()))):
            raise ValueError(f"view {view!r} uses {len(idx)} of the {len(self.streams)} batched encoders, which "
                             f"would run and train all of them; build the model with streams="
                             f"{tuple(self.streams[i] for i in idx)} to train this view (skelfast.train.finetune "
                             f"does), or use the reference backend")
        logits = self.encoders(self.encoder_inputs(x, frames))[0]      # (S, N, num_class)
        return (logits[list(idx)] if partial else logits).mean(0)

    @torch.no_grad()
    def set_heads_(self, idx: Sequence[int], weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write linear heads: encoder idx[j] gets weight[j] (num_class, H) and bias[j] (num_class,)."""
        heads = {}
        for j, i in enumerate(idx):
            heads[f"{i}.fc.weight"], heads[f"{i}.fc.bias"] = weight[j], bias[j]
        # per-model keys work for both encoder kinds (StackedEncoders maps them onto its stacks)
        _, unexpected = self.encoders.load_state_dict(heads, strict=False)   # the other keys stay
        if unexpected:
            raise KeyError(f"no such heads: {unexpected}")
