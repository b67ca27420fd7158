"""Checkpoint series written by the real tools (transformers.Trainer, save_pretrained, torch.save as
nanoGPT does, lightning.Trainer), each from a few steps of real training on the stdlib corpus of
examples/make_checkpoints.py. Tiny models (width 32, 2 blocks): seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

CONTEXT = 32


def batches(example, n: int, batch: int = 8, seed: int = 0):
    """``n`` (x, y) byte batches from the stdlib corpus."""
    data = example.corpus(200_000)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ix = torch.randint(len(data) - CONTEXT - 1, (batch,), generator=gen)
        yield (torch.stack([data[i:i + CONTEXT] for i in ix]), torch.stack([data[i + 1:i + CONTEXT + 1] for i in ix]))


def nano_config(example, width: int = 32):
    return example.Config(n_layer=2, d_model=width, n_head=2, context=CONTEXT)


def hf_trainer_run(example, out: Path) -> Path:
    """transformers.Trainer on a tiny GPT-2: checkpoint-4/, -8/, -12/ and the final model at the root; the loss,
    learning rate (4 warm-up steps, then cosine) and gradient norm logged at every step (trainer_state.json)."""
    import transformers as T

    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2))
    data = [{"input_ids": x[0], "labels": x[0]} for x in batches(example, 96, batch=1)]
    args = T.TrainingArguments(output_dir=str(out), max_steps=12, save_steps=4, per_device_train_batch_size=8,
                               report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps", seed=0,
                               logging_steps=1, warmup_steps=4, lr_scheduler_type="cosine")
    trainer = T.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model()
    return out


def train_hf(model, example, steps: int):
    """A few AdamW steps of causal LM training on a transformers model."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x, _ in batches(example, steps):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


def pythia_sharded_run(example, out: Path, dtype=torch.bfloat16) -> Path:
    """A tiny GPT-NeoX (Pythia's architecture) saved like Pythia's revisions: step0/, step3/, step6/,
    each a sharded safetensors model (several model-0000k-of-0000n files and an index), in bf16."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.GPTNeoXConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=CONTEXT)
    model = T.GPTNeoXForCausalLM(cfg)
    for step in (0, 3, 6):
        if step:
            train_hf(model, example, 3)
        model.to(dtype).save_pretrained(out / f"step{step}", max_shard_size="40KB")
        model.float()
    return out


def bin_folders_run(example, out: Path) -> Path:
    """A tiny Llama in fp16 saved the way transformers < 5 wrote ``pytorch_model.bin``
    (``torch.save(state_dict)``) in Trainer folders ``checkpoint-N/`` with trainer_state.json."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=CONTEXT)
    model = T.LlamaForCausalLM(cfg)
    for step in (2, 4, 6):
        train_hf(model, example, 2)
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return out


def nanogpt_run(example, out: Path, wrap: str = "", names: str = "ckpt_{}.pt", steps=(0, 5, 10)) -> Path:
    """nanoGPT's training dict ``{'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'}``
    saved with torch.save. ``wrap``: "compile" (keys ``_orig_mod.``, as nanoGPT with compile=True writes
    them), "dp" (``module.``, a DataParallel model), "" (plain). ``names``: file name with {} for the step
    (no {}: a letter per file, so the step is only inside)."""
    torch.manual_seed(0)
    cfg = nano_config(example)
    model = example.GPT(cfg)
    wrapped = {"compile": lambda m: torch.compile(m), "dp": torch.nn.DataParallel, "": lambda m: m}[wrap](model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    out.mkdir(parents=True, exist_ok=True)
    data = batches(example, max(steps))
    for it in range(max(steps) + 1):
        if it in steps:
            name = names.format(it) if "{}" in names else f"{names}{'abcdefgh'[steps.index(it)]}.pt"
            torch.save({"model": wrapped.state_dict(), "optimizer": opt.state_dict(), "model_args": vars(cfg),
                        "iter_num": it, "best_val_loss": 1e9, "config": {"wrap": wrap}}, out / name)
        if it < max(steps):
            x, y = next(data)
            F.cross_entropy(model(x).view(-1, cfg.vocab), y.view(-1)).backward()
            opt.step()
            opt.zero_grad()
    return out


def gpt_module(example):
    """A LightningModule around the example's GPT (its parameters under ``model.``)."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = example.GPT(nano_config(example))

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x).view(-1, 256), y.view(-1))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    return Module


def fit_lightning(example, module, out: Path, steps: int, every: int, items: int, callbacks: tuple = (),
                  logger=False) -> Path:
    """``module()`` trained ``steps`` steps of batch 1 (epochs of ``items`` batches) on CPU by lightning.Trainer,
    with ModelCheckpoint(every_n_train_steps=every, save_top_k=-1) writing into ``out`` (and ``callbacks``,
    ``logger``: logging every step)."""
    import lightning as L

    torch.manual_seed(0)
    xs, ys = zip(*batches(example, items, batch=1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=1)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out), every_n_train_steps=every, save_top_k=-1)
    trainer = L.Trainer(max_steps=steps, callbacks=[saver, *callbacks], logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)
    trainer.fit(module(), loader)
    return out


def lightning_run(example, out: Path) -> Path:
    """lightning.Trainer + ModelCheckpoint(every_n_train_steps=5, save_top_k=-1), 15 steps on CPU, the GPT
    as ``self.model``: epoch=E-step=5.ckpt, ...-step=10.ckpt, ...-step=15.ckpt."""
    return fit_lightning(example, gpt_module(example), out, steps=15, every=5, items=8)


def lightning_logged_run(example, out: Path) -> Path:
    """:func:`lightning_run` with a CSVLogger (``lightning_logs/version_0/metrics.csv`` in ``out``): the module
    logs ``train_loss`` every step, LearningRateMonitor ``lr-AdamW`` (a one-cycle schedule); checkpoints
    every 4 steps up to 12."""
    import lightning as L

    Base = gpt_module(example)

    class Logged(Base):
        def training_step(self, batch, i):
            loss = super().training_step(batch, i)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=3e-3)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=12)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    logger = L.pytorch.loggers.CSVLogger(str(out))
    monitor = L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")
    return fit_lightning(example, Logged, out, steps=12, every=4, items=6, callbacks=(monitor,), logger=logger)


def lightning_encoder_run(example, out: Path) -> Path:
    """lightning.Trainer + ModelCheckpoint(every_n_train_steps=3, save_top_k=-1) on a model built from
    PyTorch's own nn.TransformerEncoder (names ``encoder.layers.N.linear1.weight``,
    ``...self_attn.in_proj_weight``), trained 9 steps on CPU: epoch=0-step=3.ckpt, -6, -9."""
    import lightning as L
    import torch.nn as nn

    class Encoder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 16)
            layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=48, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
            self.head = nn.Linear(16, 256)

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.head(self.encoder(self.embed(x))).view(-1, 256), y.view(-1))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return fit_lightning(example, Encoder, out, steps=9, every=3, items=9)


class Chain(torch.nn.Module):
    """A token embedding, then ``blocks`` in turn with no residual: a model each of whose blocks is known."""

    def __init__(self, vocab: int, dim: int, blocks) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(blocks)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return x
