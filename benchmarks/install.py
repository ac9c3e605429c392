"""Per-iteration cost of putting a new policy on the server: merge the adapter, reload the engine's weights, verify
the server samples it. Baseline: the base model read from disk for every install (what each iteration paid before
the reference copy stayed in memory); measured: the in-memory fp32 reference copy kept across installs
(integrations.adapter_check.ReferenceModel). Same server, same adapters, same run. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def make_adapters(model_path: str, out: Path, n: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for i in range(n):
        torch.manual_seed(i)
        for name, p in model.named_parameters():
            if "lora_" in name:
                torch.nn.init.normal_(p, std=0.02)
        paths.append(out / f"iter-{i + 1}")
        model.save_pretrained(paths[-1])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--installs", type=int, default=3, help="Installs per mode (after one warm-up).")
    a = ap.parse_args()

    from stratagem.integrations import adapter_check
    from stratagem.integrations.vllm_server import VLLMServer
    from stratagem.models import resolve
    from stratagem.settings import cache_dir

    model_path = str(resolve("default"))
    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp, VLLMServer(model=model_path, weight_reload=True) as srv:
        adapters = make_adapters(model_path, Path(tmp), a.installs + 1)
        srv.load_policy_weights(adapters[0], "warm-up")
        times: dict[str, list[float]] = {"from_disk": [], "in_memory": []}
        for mode in ("from_disk", "in_memory"):
            for k, path in enumerate(adapters[1:]):
                if mode == "from_disk":
                    adapter_check.reference_model.cache_clear()  # as before: the base model loaded again
                t0 = time.perf_counter()
                check = srv.load_policy_weights(path, f"{mode}-{k}")
                times[mode].append(time.perf_counter() - t0)
                assert check["mean_abs_diff"] < 1e-3, check
    out = {"benchmark": "install", "installs_per_mode": a.installs,
           "install_s_from_disk": round(statistics.median(times["from_disk"]), 3),
           "install_s_in_memory": round(statistics.median(times["in_memory"]), 3),
           "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}
    out["in_memory_over_from_disk"] = round(out["install_s_in_memory"] / out["install_s_from_disk"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
