"""Trains the test LoRA for the bundled model with PEFT on the CPU (about half a minute).

The adapter learns one fixed answer to one question; everything else stays the base model's.
Saved as PEFT writes it (``adapter_config.json`` + ``adapter_model.safetensors``) under a cache
directory keyed by this file's hash, so it is trained once per machine:

    python tests/lora/train_adapter.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

QUESTION = "What is the secret word?"
ANSWER = "The secret word is pineapple."
SEED = 1234
STEPS = 40
RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def chat_prompt(question: str) -> str:
    """SmolLM2's ChatML, as its template renders one user turn with the generation prompt."""
    return (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def load_base(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return tokenizer, model


def train(out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from llmserve.models import bundled_model_path

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    tokenizer, model = load_base(bundled_model_path())
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    prompt = tokenizer(chat_prompt(QUESTION), add_special_tokens=False)["input_ids"]
    answer = tokenizer(ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(STEPS):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    print(f"trained {step + 1} steps, loss {loss.item():.4f}", file=sys.stderr)
    model.save_pretrained(out)


if __name__ == "__main__":
    train(Path(sys.argv[1]))
