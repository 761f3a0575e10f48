"""Training throughput: the project's MLM training step under a strategy vs a plain PyTorch loop.

    python benchmarks/throughput.py                                  # small BERT, CPU, a few minutes
    python benchmarks/throughput.py --strategy zero3 --precision bf16-mixed
    python benchmarks/throughput.py --size 1.2b --strategy zero3 --precision bf16-mixed   # GPU

Both sides train the same Hugging Face ``BertForMaskedLM`` (same initial weights) on the same
pre-collated batches, with the same loss (cross-entropy of the MLM head on the masked positions
only, as ``MlmModule.mlm_loss`` computes it), AdamW, gradient clipping at 1.0 and the same precision:

* trainer: ``lightning_modules.stages.mlm.MlmModule`` (``stage=mlm``'s LightningModule) under ``Trainer``
  with the strategy of ``conf/strategy/<name>.yaml`` (loader, forward, backward, optimizer, logging);
* baseline: a plain loop ``loss.backward(); clip; opt.step(); opt.zero_grad()`` over the same model.

The two are interleaved (one baseline step after each trainer step, from a callback), so both see
the same machine load; the first ``--warmup`` steps of each are dropped and medians are compared. The last line printed is one
JSON object: tokens_per_s, baseline_tokens_per_s, ratio, step medians, peak_mem_bytes and, on a GPU,
mfu = tokens/s * (6 N + 12 L h s) / peak dense bf16 FLOP/s of the device.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import BertConfig, BertForMaskedLM

from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.scale.devices import on_gpu
from lightning_modules.scale.optim import parameter_groups

SIZES = {
    # name: (layers, hidden, heads, seq_len, batch)
    "small": (4, 256, 4, 128, 8),
    "1.2b": (24, 2048, 32, 512, 8),
}
# Dense bf16 peak FLOP/s (no sparsity), by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--layers", type=int, help="override the size's layer count")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--strategy", default="auto", help="an option of conf/strategy (auto, ddp, zero1, zero3, ...)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--stage", default="mlm", choices=["mlm"], help="the LightningModule whose step is timed")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder on both sides")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--tokenizer", default=os.environ.get("ZH_MLM_SMALL", str(ROOT.parent / "shared/encoders/zh-mlm-small")))
    parser.add_argument("--peak-flops", type=float, help="device peak FLOP/s for mfu (default: table by GPU name)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# -- the model and batches -------------------------------------------------------------------------
def build_model(args, vocab_size: int, pad_id: int) -> BertForMaskedLM:
    layers, hidden, heads, seq, _ = SIZES[args.size]
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=args.layers or layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max(512, args.seq_len or seq), pad_token_id=pad_id,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = args.attn
    model = BertForMaskedLM(config)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def make_batches(n: int, batch: int, seq: int, vocab: int, mask_id: int, seed: int) -> list[dict]:
    """Random token batches, 15% of positions masked with labels (what MlmModule.collate hands over)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        where = torch.rand(batch, seq, generator=g) < 0.15
        labels = torch.where(where, ids, torch.full_like(ids, IGNORE))
        inputs = {"input_ids": torch.where(where, torch.full_like(ids, mask_id), ids),
                  "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        out.append({"inputs": inputs, "labels": labels, "size": batch})
    return out


# -- the two sides -----------------------------------------------------------------------------------
def synced_time() -> float:
    if on_gpu():
        torch.cuda.synchronize()
    return time.perf_counter()


class Interleaved(L.Callback):
    """Times the trainer's steps and runs one baseline step after each, so both see the same machine.

    A trainer step is the time from the end of the previous baseline step to the end of this step's
    ``on_train_batch_end`` (loader, forward, backward, optimizer, logging: all of it).
    """

    def __init__(self, baseline_step) -> None:
        self.baseline_step = baseline_step
        self.trainer_steps: list[float] = []
        self.baseline_steps: list[float] = []
        self.resumed: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.resumed = synced_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.trainer_steps.append(synced_time() - self.resumed)
        self.baseline_steps.append(self.baseline_step(batch_idx))
        self.resumed = synced_time()


def build_module(stage: str, model, tokenizer, lr: float):
    """The LightningModule of ``stage`` around ``model``, built from conf/stage/<stage>.yaml as train.py builds it
    (constant lr: no schedule, so that every step does the same work)."""
    if stage != "mlm":
        raise ValueError(f"--stage {stage!r}: allowed mlm")
    from datamodules.runs.build import instantiate_with
    from datamodules.runs.saved_config import compose_train_config

    cfg = compose_train_config([f"stage={stage}", f"stage.optim.lr={lr}", "stage.optim.scheduler=null",
                                "stage.export_dir=null"])
    return instantiate_with(cfg.stage, masked_lm=model, tokenizer=tokenizer)


def strategy_from_conf(name: str, batch_size: int):
    path = ROOT / "conf/strategy" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (ROOT / "conf/strategy").glob("*.yaml"))
        raise SystemExit(f"--strategy {name!r}: no conf/strategy/{name}.yaml; allowed: {options}")
    node = OmegaConf.load(path).strategy
    if not OmegaConf.is_dict(node):
        return node
    if "DeepSpeed" in node._target_:  # the loader yields ready batches, so DeepSpeed cannot read the size
        node.logging_batch_size_per_gpu = batch_size
    return instantiate(node)


def time_trainer(args, module, batches, accelerator: str, baseline_step) -> tuple[list[float], list[float]]:
    timer = Interleaved(baseline_step)
    strategy = strategy_from_conf(args.strategy, batches[0]["size"])
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, strategy=strategy, precision=args.precision,
        max_steps=len(batches), gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.trainer_steps[args.warmup:], timer.baseline_steps[args.warmup:]


class Baseline:
    """The plain PyTorch loop, one step per call: forward, MLM loss, backward, clip, AdamW step."""

    def __init__(self, args, model, batches, device: torch.device, lr: float) -> None:
        self.model = model.to(device).train()
        self.batches = batches
        self.device = device
        self.optimizer = torch.optim.AdamW(parameter_groups(model.named_parameters(), 0.01), lr=lr, eps=1e-8)
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    def __call__(self, index: int) -> float:
        start = synced_time()
        batch = self.batches[index]
        inputs = {k: v.to(self.device) for k, v in batch["inputs"].items()}
        labels = batch["labels"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            hidden = self.model.bert(**inputs).last_hidden_state
            where = labels != IGNORE
            logits = self.model.cls(hidden[where]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[where])
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return synced_time() - start


# -- accounting --------------------------------------------------------------------------------------
def flops_per_token(model: BertForMaskedLM, seq: int) -> float:
    """6 N + 12 L h s (Kaplan et al. / PaLM appendix B), N = non-embedding parameters."""
    config = model.config
    embedding = sum(p.numel() for p in model.bert.embeddings.parameters())
    n = sum(p.numel() for p in model.parameters()) - embedding
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq


def peak_flops(args) -> float | None:
    if args.peak_flops:
        return args.peak_flops
    if not on_gpu():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    *_, seq, batch = SIZES[args.size]
    seq, batch = args.seq_len or seq, args.batch_size or batch
    gpu = on_gpu()
    device = torch.device("cuda" if gpu else "cpu")
    if args.precision == "16-mixed" and not gpu:
        raise SystemExit("--precision 16-mixed needs a CUDA GPU; allowed on CPU: 32-true, bf16-mixed")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = build_model(args, len(tokenizer), tokenizer.pad_token_id)
    baseline_model = copy.deepcopy(model)
    if args.compile:
        model.bert.compile()
        baseline_model.bert.compile()
    batches = make_batches(args.warmup + args.steps, batch, seq, len(tokenizer), tokenizer.mask_token_id, args.seed)
    lr = 1e-4

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    baseline = Baseline(args, baseline_model, batches, device, lr)
    module = build_module(args.stage, model, tokenizer, lr)
    trainer_steps, baseline_steps = time_trainer(args, module, batches, "gpu" if gpu else "cpu", baseline)
    peak_mem = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    tokens = batch * seq
    trainer_median = statistics.median(trainer_steps)
    baseline_median = statistics.median(baseline_steps)
    result = {
        "stage": args.stage, "strategy": args.strategy, "precision": args.precision, "size": args.size,
        "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size, "seq_len": seq,
        "batch_size": batch, "parameters": sum(p.numel() for p in baseline_model.parameters()),
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "timed_steps": len(trainer_steps),
        "step_s_median": round(trainer_median, 5),
        "baseline_step_s_median": round(baseline_median, 5),
        "step_s_quartiles": [round(q, 5) for q in statistics.quantiles(trainer_steps, n=4)],
        "baseline_step_s_quartiles": [round(q, 5) for q in statistics.quantiles(baseline_steps, n=4)],
        "tokens_per_s": round(tokens / trainer_median, 1),
        "baseline_tokens_per_s": round(tokens / baseline_median, 1),
        "ratio": round(baseline_median / trainer_median, 4),
        "peak_mem_bytes": int(peak_mem),
        "peak_mem_kind": "torch.cuda.max_memory_allocated (both loops)" if gpu else "process peak RSS (both loops)",
        "activation_checkpointing": args.activation_checkpointing, "compile": args.compile, "attn": args.attn,
    }
    peak = peak_flops(args)
    if peak:
        result["flops_per_token"] = flops_per_token(baseline_model, seq)
        result["mfu"] = round(result["tokens_per_s"] * result["flops_per_token"] / peak, 4)
        result["baseline_mfu"] = round(result["baseline_tokens_per_s"] * result["flops_per_token"] / peak, 4)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
