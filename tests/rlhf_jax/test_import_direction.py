"""Loading, sampling and exporting a transformer pull in no environment or plotting library:
the run toolkit (ppo_jax.run) imports nothing algorithmic."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "hf" / "gpt2" / "lm"

SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from rlhf_jax.hf import load_pretrained, save_pretrained
from rlhf_jax.sampling import SamplingConfig, make_generate
from rlhf_jax import checkpoint

model, params, tok = load_pretrained(sys.argv[1])
generate = make_generate(model, SamplingConfig(max_new_tokens=3), eos_id=tok.eos_id, pad_id=tok.pad_id)
ids = jnp.asarray([[tok.eos_id, 5, 6]], jnp.int32)
jax.block_until_ready(generate(params, ids, jnp.ones_like(ids, bool), jax.random.PRNGKey(0)))
save_pretrained(sys.argv[2], model, params, tok)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_transformer_load_sample_export_import_neither_gymnax_nor_matplotlib(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(FIXTURE), str(tmp_path / "export")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert (tmp_path / "export" / "model.safetensors").exists()
    assert "rlhf_jax" in loaded and not loaded & {"gymnax", "matplotlib", "seaborn", "gymnasium"}, loaded
