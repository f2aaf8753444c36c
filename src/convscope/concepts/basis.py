"""A concept set's encoder as a basis of "units": (B, C, H, W) activations -> (B, n, H, W) codes.

The scan, dissection and attribution machinery take a ``bases`` mapping ``{layer: basis}`` and
treat the basis's ``n`` codes at every position as the layer's units, so every unit tool works on
concepts without knowing what a concept is. Encoding runs in torch on the activations' device:

- PCA / ICA: ``(x - mean) @ unmixing.T`` (affine);
- SAE: the autoencoder's encoder (ReLU, then TopK per row, or BatchTopK's inference threshold);
- NMF: the non-negative least-squares codes ``argmin_{w >= 0} ||x - w H||^2`` with the dictionary
  ``H`` held fixed (what scikit-learn's ``NMF.transform`` solves), by cyclic coordinate descent,
  all rows at once; the problem is convex, so the codes agree with scikit-learn's to its
  tolerance (tested), with its ``alpha_W`` / ``l1_ratio`` penalties scaled as it scales them.
"""

from __future__ import annotations

import hashlib

import torch

from convscope.errors import UserInputError

LINEAR = ("pca", "ica")  # codes = (x - mean) @ unmixing.T


class ConceptBasis:
    """Encoder of a :class:`~convscope.concepts.result.ConceptSet` on ``device``: call it on maps
    (B, C, H, W) or rows (N, C); returns codes (B, n, H, W) or (N, n), float32."""

    def __init__(self, concepts, device=None):
        self.layer = concepts.layer
        self.method = concepts.method
        self.n = int(concepts.n)
        self.channels = int(concepts.dictionary.shape[1])
        self.device = torch.device(device or "cpu")
        self.fingerprint = fingerprint(concepts)
        self.settings = dict(concepts.settings)
        to = dict(device=self.device, dtype=torch.float32)
        self.dictionary = concepts.dictionary.to(**to)
        self.state = {k: v.to(**to) for k, v in concepts.state.items() if isinstance(v, torch.Tensor)}
        if self.method == "nmf":
            beta = self.settings.get("beta_loss", "frobenius")
            if beta not in ("frobenius", 2, 2.0):
                raise UserInputError(f"NMF codes with beta_loss={beta!r} are not supported by the encoder")
            self.gram = self.dictionary @ self.dictionary.T  # (n, n)
            alpha = float(self.settings.get("alpha_W", 0.0) or 0.0)
            ratio = float(self.settings.get("l1_ratio", 0.0) or 0.0)
            # scikit-learn scales W's penalties by the number of features
            self.l1 = alpha * ratio * self.channels
            self.l2 = alpha * (1 - ratio) * self.channels
            self.max_iter = int(self.settings.get("max_iter", 400))
            self.tol = float(self.settings.get("tol", 1e-4))

    def __repr__(self) -> str:  # stable: Ray's shard manifest records it
        return f"ConceptBasis({self.layer}, {self.method}, n={self.n}, {self.fingerprint})"

    def to(self, device) -> ConceptBasis:
        """This basis on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        out = object.__new__(ConceptBasis)
        out.__dict__.update(self.__dict__)
        out.device = device
        out.dictionary = self.dictionary.to(device)
        out.state = {k: v.to(device) for k, v in self.state.items()}
        if self.method == "nmf":
            out.gram = self.gram.to(device)
        return out

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        if acts.dim() == 4:
            b, c, h, w = acts.shape
            rows = acts.permute(0, 2, 3, 1).reshape(-1, c)
            return self.rows(rows).reshape(b, h, w, self.n).permute(0, 3, 1, 2)
        return self.rows(acts)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (N, n) of rows ``x`` (N, C)."""
        if x.dim() != 2 or x.shape[1] != self.channels:
            raise UserInputError(
                f"concepts of {self.layer} encode (N, {self.channels}) activations, not {tuple(x.shape)}"
            )
        x = x.to(self.device, torch.float32)
        if self.method == "nmf":
            return self._nnls(x.clamp_min(0) if self.settings.get("clip") else x)
        if self.method in LINEAR:
            return (x - self.state["mean"]) @ self.state["unmixing"].T
        if self.method.startswith("sae-"):
            pre = torch.relu(
                (x - self.state["pre_bias"]) @ self.state["encoder_weight"] + self.state["encoder_bias"]
            )
            if self.method == "sae-batchtopk" and self.settings.get("threshold") is not None:
                return pre * (pre > float(self.settings["threshold"]))
            k = min(int(self.settings["k"]), self.n)
            top = pre.topk(k, dim=1)
            return torch.zeros_like(pre).scatter_(1, top.indices, top.values)
        raise UserInputError(f"unknown concept method {self.method!r}")

    def _nnls(self, x: torch.Tensor) -> torch.Tensor:
        # min_w 0.5||x - wH||^2 + l1 |w|_1 + 0.5 l2 |w|^2, w >= 0: cyclic coordinate descent over
        # the n coordinates, every row at once; stops when the largest step is tol of the largest code
        if len(x) == 0:
            return x.new_zeros(0, self.n)
        g = self.gram + self.l2 * torch.eye(self.n, device=self.device)
        xh = x @ self.dictionary.T - self.l1  # (N, n)
        diag = g.diagonal().clamp_min(1e-12)
        # scikit-learn's start, sqrt(mean(x) / n), taken per row so that a row's codes do not
        # depend on the other rows of its batch (the problem is convex: any start converges)
        w = (x.mean(dim=1, keepdim=True).clamp_min(0) / self.n).sqrt().expand_as(xh).contiguous()
        tol = min(self.tol, 1e-6)  # tighter than the fit's: scan and heat maps batch differently
        for sweep in range(self.max_iter):
            biggest = x.new_zeros(())
            for j in range(self.n):
                grad = w @ g[:, j] - xh[:, j]
                new = (w[:, j] - grad / diag[j]).clamp_min(0)
                biggest = torch.maximum(biggest, (new - w[:, j]).abs().max())
                w[:, j] = new
            # one host sync every 8 sweeps, not every sweep (the scan calls this in its hooks)
            if sweep % 8 == 7 and bool(biggest <= tol * w.max().clamp_min(1e-12)):
                break
        return w


ENCODING = ("clip", "alpha_W", "l1_ratio", "k", "threshold", "beta_loss")  # settings codes depend on


def fingerprint(concepts) -> str:
    """A short hash of what a concept set's codes depend on (method, dictionary, the encoder's
    state and settings): scans and dissections of other encoders are never resumed or merged."""
    h = hashlib.sha1(concepts.method.encode())
    tensors = [("dictionary", concepts.dictionary)] + sorted(concepts.state.items())
    for key, t in tensors:
        if isinstance(t, torch.Tensor):
            h.update(key.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    settings = {k: concepts.settings.get(k) for k in ENCODING if concepts.settings.get(k) is not None}
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()[:16]
