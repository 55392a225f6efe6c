"""Reference timing: one RLHF-PPO iteration in plain PyTorch with Hugging Face GPT-2 models (CPU).

Not part of the project (it needs torch and transformers); run it in a separate
environment to measure the baseline on the same machine as ``benchmarks/rlhf_iteration.py``:

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers
    /tmp/hf/bin/python benchmarks/reference/torch_rlhf_iteration.py \
        --out benchmarks/results/rlhf_iteration_torch_cpu.json

The same work as ours: randomly initialised GPT-2s (vocabulary 256, 4 layers, 4 heads,
width 256) as policy, frozen reference, reward model and value model (the last two with a
scalar head on the last hidden state); 64 prompts of 16 tokens, 48 sampled tokens
(``generate`` with the KV cache); the reward model's score; policy and reference
log-probs; per-token KL rewards; GAE; 4 epochs x 4 minibatches of 16 of the clipped
policy loss and the clipped value loss, each model with its own Adam.
"""

import argparse
import json
import os
import platform
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model


class ScalarModel(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.body = GPT2Model(config)
        self.head = torch.nn.Linear(config.n_embd, 1)

    def forward(self, ids, mask):
        return self.head(self.body(input_ids=ids, attention_mask=mask).last_hidden_state).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for every forward and backward")
    parser.add_argument("--out", default="benchmarks/results/rlhf_iteration_torch.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=128, n_embd=256, n_layer=4, n_head=4, bos_token_id=255,
                        eos_token_id=255, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    policy = GPT2LMHeadModel(config)
    reference = GPT2LMHeadModel(config).eval()
    reward = ScalarModel(config).eval()
    critic = ScalarModel(config)
    popt = torch.optim.Adam(policy.parameters(), lr=3e-5)
    copt = torch.optim.Adam(critic.parameters(), lr=1e-4)
    b, p, n, epochs, mbs = 64, 16, 48, 4, 4
    prompts = torch.randint(0, 255, (b, p))

    def logprobs(model, seq, mask):
        logits = model(input_ids=seq, attention_mask=mask).logits[:, p - 1:-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, seq[:, p:, None]).squeeze(-1)

    def iteration():
        t0 = time.perf_counter()
        with torch.no_grad():
            seq = policy.eval().generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                         temperature=1.0, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        mask = torch.ones_like(seq)
        t1 = time.perf_counter()
        with torch.no_grad():
            score = reward(seq, mask)[:, -1]
        t2 = time.perf_counter()
        with torch.no_grad():
            old_logp = logprobs(policy, seq, mask)
            ref_logp = logprobs(reference, seq, mask)
            old_values = critic(seq, mask)[:, p - 1:-1]
            rewards = -0.05 * (old_logp - ref_logp)
            rewards[:, -1] += score
            adv = torch.zeros_like(rewards)
            last = torch.zeros(b)
            for t in reversed(range(n)):
                nxt = old_values[:, t + 1] if t + 1 < n else torch.zeros(b)
                last = rewards[:, t] + nxt - old_values[:, t] + 0.95 * last
                adv[:, t] = last
            returns = adv + old_values
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy.train()
        for _ in range(epochs):
            for idx in torch.randperm(b).view(mbs, -1):
                ratio = torch.exp(logprobs(policy, seq[idx], mask[idx]) - old_logp[idx])
                loss = -torch.min(ratio * adv[idx], ratio.clamp(0.8, 1.2) * adv[idx]).mean()
                popt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                popt.step()
                v = critic(seq[idx], mask[idx])[:, p - 1:-1]
                vc = old_values[idx] + (v - old_values[idx]).clamp(-0.2, 0.2)
                vloss = 0.5 * torch.max((v - returns[idx]) ** 2, (vc - returns[idx]) ** 2).mean()
                copt.zero_grad()
                vloss.backward()
                torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
                copt.step()
        t3 = time.perf_counter()
        return {"sample": t1 - t0, "score": t2 - t1, "update": t3 - t2, "total": t3 - t0}

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return iteration()

    run()  # warm-up
    runs = [run() for _ in range(args.repeats)]
    phases = ("sample", "score", "update", "total")
    best = {k: min(r[k] for r in runs) for k in phases}
    print("  ".join(f"{k} {best[k]:.3f} s" for k in phases))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "rlhf_iteration_reference_torch", "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "batch": b, "prompt_len": p, "new_tokens": n, "epochs": epochs,
                   "minibatches": mbs, "autocast_bf16": args.bf16, "best_s": best, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
