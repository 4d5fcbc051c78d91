"""Training logs: running loss means to TensorBoard + ``log.jsonl``, audio samples and mel figures."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

# Shown in the progress bar (short names); everything is logged to TensorBoard.
POSTFIX = {"loss/total": "loss", "mel/l1": "mel", "adv/gen": "adv", "disc/loss": "disc"}


class TrainLogger:
    def __init__(self, accelerator, out_dir: Path, cfg, sample_rate: int) -> None:
        self.acc, self.out_dir, self.cfg, self.sr = accelerator, Path(out_dir), cfg, sample_rate
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.last: dict[str, float] = {}

    def add(self, losses: dict[str, torch.Tensor], extras: dict[str, torch.Tensor]) -> None:
        items = dict(losses)
        items.update({k: v for k, v in extras.items() if torch.is_tensor(v) and v.numel() == 1})
        for k, v in items.items():
            self.sums[k] += float(v.detach().float())
            self.counts[k] += 1

    def postfix(self) -> dict[str, str]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        return {short: f"{means[k]:.3f}" for k, short in POSTFIX.items() if k in means}

    def flush(self, step: int, lr: float, seconds: float) -> None:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        self.last = {k: round(v, 5) for k, v in means.items()}
        self.acc.log({**means, "train/lr": lr, "train/seconds": seconds}, step=step)
        if self.acc.is_main_process:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "seconds": round(seconds, 1), "lr": lr, **self.last}) + "\n")

    def _writer(self):
        try:
            return self.acc.get_tracker("tensorboard", unwrap=True)
        except (ValueError, KeyError):  # no tensorboard tracker (e.g. tensorboard not installed): scalars only
            return None

    @torch.no_grad()
    def samples(self, step: int, model, batch) -> None:
        """Reconstruct the fixed valid batch with the EMA generator; log audio, mel figures, valid mel."""
        if not self.acc.is_main_process:
            return
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        teacher = batch.teacher
        if teacher is not None:
            teacher = type(teacher)(
                features=None if teacher.features is None else teacher.features.to(dev),
                units=None if teacher.units is None else teacher.units.to(dev), feature_rate=teacher.feature_rate)
        wav = batch.wav.to(dev)
        wav_hat = model(wav, teacher=teacher).wav_hat.float()
        model.train(was_training)
        from codec.losses import MultiResolutionMelLoss, ReconstructionLossConfig

        mel = MultiResolutionMelLoss(ReconstructionLossConfig(sample_rate=self.sr)).to(dev)(wav_hat, wav)
        self.acc.log({"valid/mel_l1": float(mel)}, step=step)
        w = self._writer()
        if w is None:
            return
        for i in range(wav.shape[0]):
            if step == self.cfg.sample_every:
                w.add_audio(f"audio/{i}_original", wav[i, 0].clamp(-1, 1).cpu(), step, sample_rate=self.sr)
            w.add_audio(f"audio/{i}_reconstruction", wav_hat[i, 0].clamp(-1, 1).cpu(), step, sample_rate=self.sr)
            w.add_figure(f"mel/{i}", mel_figure(wav[i, 0].cpu(), wav_hat[i, 0].cpu(), self.sr), step)
        w.flush()


def mel_figure(wav, wav_hat, sample_rate: int):
    """Original and reconstructed log-mel spectrograms stacked in one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for ax, x, title in zip(axes, (wav, wav_hat), ("original", "reconstruction")):
        m = mel(x.float()).clamp_min(1e-5).log10().numpy()
        ax.imshow(m, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (16 ms)")
    fig.tight_layout()
    return fig
