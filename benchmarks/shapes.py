"""The Hugging Face config.json shapes that ``benchmarks/pretrained.py`` and its PyTorch
reference both build with random weights (nothing is downloaded), and the flags both take."""

GPT2_SMALL = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
              "n_head": 12, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
QWEN2_05B = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False}
QWEN2_15B = {**QWEN2_05B, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 131072}
MODELS = {"gpt2-small": GPT2_SMALL, "qwen2-0.5b": QWEN2_05B, "qwen2-1.5b": QWEN2_15B}


def add_arguments(parser, default_out: str) -> None:
    """The flags of both scripts, so the two always time the same thing."""
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "qwen2-0.5b"], choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=default_out)
