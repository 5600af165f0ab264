"""A Hugging Face `Trainer` fine-tuning a small GPT-2-style model (random init, no download) on
text the repository ships (docs/*.md, byte-level tokens), pruned by prune's callback. Run it
twice with --stop-at / --resume to see a resumed run continue the masks exactly.

    python examples/python/hf_trainer.py --out /tmp/hf --max-steps 40
"""

import argparse
import glob
import json
import os
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prune  # noqa: E402
from common import ROOT, digest  # noqa: E402

PRUNING = {
    "schedule": {"kind": "polynomial_decay", "initial_sparsity": 0.2, "final_sparsity": 0.7, "begin_step": 4, "end_step": 28, "frequency": 4},
    # Attention and MLP matrices; embeddings (tied to the LM head) and norms stay dense.
    "include": [r"\.attn\.c_attn\.weight$", r"\.attn\.c_proj\.weight$", r"\.mlp\.c_fc\.weight$", r"\.mlp\.c_proj\.weight$"],
}
BLOCK = 64


class Text(torch.utils.data.Dataset):
    """The repository's docs as bytes, cut into blocks of BLOCK tokens (byte = token)."""

    def __init__(self):
        text = b"".join(open(p, "rb").read() for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))))
        ids = torch.tensor(list(text[: 256 * BLOCK]), dtype=torch.long)
        self.blocks = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--stop-at", type=int, default=None, help="end training after this step (a checkpoint is saved there)")
    ap.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in --out")
    args = ap.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    pruner = prune.Pruner(model, PRUNING, total_steps=args.max_steps)
    training = TrainingArguments(
        output_dir=args.out,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        save_strategy="steps",
        save_steps=args.stop_at or 10,
        logging_steps=10,
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    callbacks = [prune.integrations.HuggingFaceCallback(pruner)]
    if args.stop_at is not None:
        from transformers import TrainerCallback

        class Stop(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):
                if state.global_step >= args.stop_at:
                    control.should_training_stop = True
                    control.should_save = True

        callbacks.append(Stop())
    trainer = Trainer(model=model, args=training, train_dataset=Text(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    result = {"step": pruner.step_count, "digest": digest(pruner.masks), "sparsity": pruner.sparsity()}
    if args.stop_at is None:
        pruner.strip()
        result["artifact"] = prune.export(model, os.path.join(args.out, "model.safetensors"))
    print(json.dumps(result))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
